"""Scaling out: streamed shards (HTTP, `pipe:`, brace ranges) for training and evaluation reads, two training
"nodes" launched by torchrun on loopback, and a DVC remote round trip (push, wipe, pull, no-op repro).

The streamed tests serve real shards from a local HTTP server on 127.0.0.1 (tests/conftest.py `server`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import _dlfp_test_prereq as prereq  # tests/_prereq.py, registered by conftest.py
import pytest
import yaml
from _dlfp_test_faces import FACES  # tests/_faces.py, registered by conftest.py

from dlfp.io.atomic import write_json_atomic
from dlfp.io.hashing import file_digest
from dlfp.shards import streamed as streams
from dlfp.shards.format import ShardCorruptError, ShardSetWriter, json_bytes, split_records
from dlfp.shards.local import iter_samples, read_index

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TRAIN_FACES, PAIR_FACES, PER_SHARD = 8, 4, 3
SIZE = 64
TINY = {"out_size": SIZE, "num_style_feat": 32, "num_mlp": 1, "channel_multiplier": 1, "narrow": 0.0625,
        "workers": 0, "tensorboard": False, "threads": 1, "batch_size": 2, "shuffle_buffer": 4,
        "checkpoint_every": 1000, "sample_every": 1000}
RUN_TIMEOUT_S = 600
DVC_FACES = 8

pytestmark = prereq.needs(FACES.is_dir(), "shared faces not present")


def _faces(count: int, skip: int = 0) -> list[Path]:
    return sorted(FACES.glob("*.png"))[skip: skip + count]


@pytest.fixture(scope="module")
def shard_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Train shards and validation pairs (GT used as LQ too: only reading is tested) of real faces."""
    root = tmp_path_factory.mktemp("stream")
    writer = ShardSetWriter(root / "shards", "train/clean-{:06d}.tar", PER_SHARD)
    for face in _faces(TRAIN_FACES):
        writer.write({"__key__": face.stem, "gt.png": face.read_bytes(),
                      "json": json_bytes({"id": face.stem, "split": "train"})})
    records = [r.__dict__ for r in writer.close()]
    write_json_atomic(root / "shards" / "index.json",
                      {"splits": {"train": {"count": TRAIN_FACES, "shards": records}}})
    writer = ShardSetWriter(root / "pairs", "val/moderate/pairs-{:06d}.tar", PER_SHARD)
    for face in _faces(PAIR_FACES, skip=TRAIN_FACES):
        writer.write({"__key__": face.stem, "gt.png": face.read_bytes(), "lq.png": face.read_bytes(),
                      "json": json_bytes({"id": face.stem, "split": "val"})})
    records = [r.__dict__ for r in writer.close()]
    write_json_atomic(root / "pairs" / "index.json",
                      {"splits": {"val": {"presets": {"moderate": {"count": PAIR_FACES, "shards": records}}}}})
    return {"root": root, "shards": root / "shards", "pairs": root / "pairs"}


def _serve_folder(server, folder: Path, prefix: str) -> str:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            server.serve(f"/{prefix}/{path.relative_to(folder)}", path.read_bytes())
    return server.url(f"{prefix}/")


def _keys(samples) -> list[tuple[str, str]]:
    return [(s["__key__"], file_digest_bytes(s["gt.png"])) for s in samples]


def file_digest_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------ streamed reads
def test_urls_pipes_and_brace_ranges_read_the_same_samples_as_the_local_folder(server, shard_dirs) -> None:
    local_records = split_records(read_index(shard_dirs["shards"]), "train")
    expected = _keys(iter_samples(shard_dirs["shards"], local_records))
    base = _serve_folder(server, shard_dirs["shards"], "shards")
    brace = server.url("shards/train/clean-{000000..000002}.tar")
    locations = [base, base.rstrip("/"), brace, f"pipe:curl -s -f {brace}",
                 str(Path(base))]  # pathlib collapses "//": stage run() functions wrap arguments in Path
    for location in locations:
        assert streams.is_streamed(location), location
        records = split_records(read_index(location), "train")
        assert records == local_records, location
        assert _keys(iter_samples(location, records)) == expected, location
    assert not streams.is_streamed(shard_dirs["shards"])


def test_a_brace_range_reads_only_the_shards_it_names(server, shard_dirs) -> None:
    from dlfp.train.data import train_records

    _serve_folder(server, shard_dirs["shards"], "shards")
    records = train_records(server.url("shards/train/clean-{000001..000002}.tar"))
    assert [r["path"] for r in records] == ["train/clean-000001.tar", "train/clean-000002.tar"]
    with pytest.raises(streams.StreamedShardError, match="no shard index found"):
        train_records(server.url("elsewhere/clean-{000000..000001}.tar"))


def test_training_stream_is_the_same_from_http_and_from_disk(server, shard_dirs) -> None:
    from dlfp.train.data import SampleRecipe, ShardStream, train_records

    base = _serve_folder(server, shard_dirs["shards"], "shards")
    recipe = SampleRecipe(seed=3, out_size=32)
    orders = []
    for location in (shard_dirs["shards"], base):
        stream = iter(ShardStream(location, train_records(location), recipe, rank=1, world_size=2))
        orders.append([next(stream)[2]["key"] for _ in range(2 * TRAIN_FACES)])
    assert orders[0] == orders[1]


@pytest.mark.parametrize("damage", ["truncate", "flip_byte"])
def test_a_damaged_streamed_shard_is_named(server, shard_dirs, damage: str) -> None:
    base = _serve_folder(server, shard_dirs["shards"], "shards")
    victim = "train/clean-000001.tar"
    data = bytearray((shard_dirs["shards"] / victim).read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    server.serve(f"/shards/{victim}", bytes(data))
    records = split_records(read_index(base), "train")
    with pytest.raises(ShardCorruptError, match=f"{base}{victim}: .*truncated or corrupted"):
        list(iter_samples(base, records))


def test_a_missing_index_or_failing_command_is_a_clear_error(server, shard_dirs) -> None:
    with pytest.raises(streams.StreamedShardError, match="index.json: shard index missing"):
        read_index(server.url("nothing-here/"))
    with pytest.raises(streams.StreamedShardError, match="pipe: location must name its shards"):
        read_index("pipe:cat /nonexistent/")


def _params(**train: object):
    from dlfp.params import parse_params

    raw = {"seed": 7, "data": {"source": "folder", "folder": "unused", "size": SIZE},
           "degrade": {"presets": {"paper": {}, "moderate": {"blur_sigma": [1.0, 3.0]}}},
           "train_prior": {**TINY, "iters": 4},
           "train": {**TINY_TRAIN, **train}}
    return parse_params(raw)


TINY_TRAIN = {k: v for k, v in TINY.items() if k in ("workers", "tensorboard", "threads", "batch_size",
                                                      "shuffle_buffer", "checkpoint_every", "sample_every")}
TINY_TRAIN.update(iters=4, val_every=1000, perceptual_network="off", identity_network="off", r1_interval=2)


def test_prior_and_gfpgan_train_on_streamed_shards_and_pairs(server, shard_dirs, tmp_path: Path) -> None:
    """train_prior and train, given URLs (as `dlfp ... --in <url>` passes them, through Path), take steps."""
    import torch

    from dlfp.stages import train as train_stage
    from dlfp.stages import train_prior as prior_stage
    from dlfp.train import prior
    from dlfp.train.engine.checkpoint import checkpoint_path
    from dlfp.train.engine.loop import TrainingInterrupted

    shards_url = _serve_folder(server, shard_dirs["shards"], "shards")
    pairs_url = _serve_folder(server, shard_dirs["pairs"], "pairs")
    params = _params()
    with pytest.raises(TrainingInterrupted):
        prior_stage.run(params, Path(shards_url), tmp_path / "prior_streamed", stop_after=2)
    assert torch.load(checkpoint_path(tmp_path / "prior_streamed.partial"), weights_only=True)["step"] == 2
    prior_stage.run(params, shard_dirs["shards"], tmp_path / "prior")  # a finished prior for GFP-GAN
    brace = server.url("shards/train/clean-{000000..000002}.tar")
    with pytest.raises(TrainingInterrupted):
        train_stage.run(params, Path(brace), tmp_path / "prior" / prior.PRIOR_FILE, Path(pairs_url),
                   tmp_path / "gfpgan", stop_after=2)
    assert torch.load(checkpoint_path(tmp_path / "gfpgan.partial"), weights_only=True)["step"] == 2
    assert server.count("shards/train/clean-000000.tar") >= 2 and server.count("pairs/index.json") >= 1


def test_index_digest_is_the_same_for_a_folder_and_its_url(server, shard_dirs) -> None:
    base = _serve_folder(server, shard_dirs["shards"], "shards")
    assert streams.index_digest(base) == streams.index_digest(shard_dirs["shards"]) \
        == file_digest(shard_dirs["shards"] / "index.json")


# ---------------------------------------------------------------------------------------- two nodes (DDP)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two torch processes start and train: ~25 s
def test_two_nodes_on_loopback_train_the_prior_with_torchrun(shard_dirs, tmp_path: Path) -> None:
    """The README's multi-node launch, with 2 "nodes" x 1 process on 127.0.0.1 (gloo on CPU)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train_prior"].update({**TINY, "iters": 2, "device": "cpu"})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    port, out = _free_port(), tmp_path / "prior"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    nodes = [subprocess.Popen([str(BIN / "torchrun"), "--nnodes", "2", "--nproc_per_node", "1",
                               "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                               "-m", "dlfp", "--params", str(params), "train_prior", "--in",
                               str(shard_dirs["shards"]), "--out", str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    results = [node.communicate(timeout=RUN_TIMEOUT_S) for node in nodes]
    for node, (stdout, stderr) in zip(nodes, results, strict=True):
        assert node.returncode == 0, stdout + stderr[-3000:]
    active = json.loads((out / "losses_active.json").read_text())
    assert active["world_size"] == 2
    assert (out / "prior.pth").is_file() and "train_prior: 2 steps" in results[0][0]


# ------------------------------------------------------------------------------------------- DVC remote
def _run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _artifacts(project: Path) -> dict[str, str]:
    """sha256 of every artifact file under data/ (not the lock files and .gitignore beside the outputs)."""
    return {str(p.relative_to(project)): file_digest(p) for p in sorted((project / "data").rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


@pytest.mark.slow  # acquire + align (dlib) + shard on 8 faces, then push and pull: ~40 s
def test_dvc_remote_round_trip_push_wipe_pull_then_repro_does_nothing(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("dvc.yaml", "src"):
        (project / name).symlink_to(REPO / name)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(folder=str(FACES), count=DVC_FACES)
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    remote = tmp_path / "remote"
    dvc = str(BIN / "dvc")
    _run(["git", "init", "-q"], project)
    _run([dvc, "init", "-q"], project)
    _run([dvc, "remote", "add", "-d", "storage", str(remote)], project)
    _run([dvc, "repro", "shard"], project)
    before = _artifacts(project)
    _run([dvc, "push", "--with-deps", "shard"], project)  # only these stages ran
    assert any(remote.rglob("*")), "nothing was pushed"

    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "data")
    _run([dvc, "pull", "--with-deps", "shard"], project)
    assert _artifacts(project) == before
    output = _run([dvc, "repro", "shard"], project)
    assert "Running stage" not in output
    assert "changed" not in _run([dvc, "status", "shard"], project)
