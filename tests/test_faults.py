"""Fault tolerance of the real `dlfp` commands on real faces: kill -9 mid-write, SIGTERM mid-training, a full
disk, damaged shards, two runs on one output; and the security rules (no code from pickles, weights_only loads).

Each test drives the installed `dlfp` command in a subprocess, the way a cluster or a user would run it, on a few
faces from ../shared/faces (copied into the test's temporary folder, never into the repository).
docs/fault-tests.md lists these tests and what each one proves.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import _dlfp_test_prereq as prereq  # tests/_prereq.py, registered by conftest.py
import pytest
import torch
import yaml
from _dlfp_test_faces import FACES  # tests/_faces.py, registered by conftest.py

from dlfp.io.hashing import file_digest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KILL_FACES = 120  # enough that writing the shards takes long enough to be caught half-way
STAGE_FACES = 16  # 6 test faces -> 24 pairs: degrade runs ~2 s, long enough to be caught half-way
POLL_S = 0.005
RUN_TIMEOUT_S = 300
TINY_PRIOR = {"out_size": 64, "num_style_feat": 32, "num_mlp": 1, "channel_multiplier": 1, "narrow": 0.0625,
              "workers": 0, "tensorboard": False, "threads": 1, "batch_size": 2, "shuffle_buffer": 4,
              "checkpoint_every": 1000, "sample_every": 1000}
SMALL_FACES, LARGE_FACES = 2, 24  # the small set fits the tmpfs, the large one cannot
TMPFS_SLACK_BYTES = 256 * 1024  # tar headers, index, receipt, tmpfs block rounding

pytestmark = prereq.needs(FACES.is_dir(), "shared faces not present")


# ------------------------------------------------------------------------------------------------ helpers
def _aligned(folder: Path, count: int) -> Path:
    """An aligned-stage folder (images/<id>.png + meta.jsonl) holding the first `count` real faces."""
    (folder / "images").mkdir(parents=True)
    lines = []
    for face in sorted(FACES.glob("*.png"))[:count]:
        shutil.copyfile(face, folder / "images" / face.name)
        lines.append(json.dumps({"id": face.stem, "source": face.name, "licence": "test"}))
    (folder / "meta.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _params_file(folder: Path, **sections: dict) -> Path:
    """The repository's params.yaml with small shards, one degrade worker and the given section overrides."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["shard"]["samples_per_shard"] = 2
    raw["degrade"]["workers"] = 1
    for name, values in sections.items():
        raw[name].update(values)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}


def _dlfp(params: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dlfp"), "--params", str(params), *args], env=_env(), capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S)


def _start(params: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "dlfp"), "--params", str(params), *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return result


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every shard and of the index (receipts hold paths and versions, not artifact bytes)."""
    files = sorted(folder.rglob("*.tar")) + [folder / "index.json"]
    return {str(path.relative_to(folder)): file_digest(path) for path in files}


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not condition():
        assert process.poll() is None, f"finished before {what}: {process.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_S)


def _has_tar(folder: Path) -> Callable[[], bool]:
    return lambda: folder.is_dir() and any(folder.rglob("*.tar"))


def _kill_9(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=RUN_TIMEOUT_S)
    assert process.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def stage_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A clean shard + degrade run on real faces: the reference every interrupted run must reproduce."""
    root = tmp_path_factory.mktemp("faults")
    params = _params_file(root)
    aligned = _aligned(root / "aligned", STAGE_FACES)
    _ok(_dlfp(params, "shard", "--in", str(aligned), "--out", str(root / "shards")))
    _ok(_dlfp(params, "degrade", "--in", str(root / "shards"), "--out", str(root / "pairs")))
    return {"root": root, "params": params, "aligned": aligned, "shards": root / "shards", "pairs": root / "pairs"}


# ------------------------------------------------------------------------------------------------ kill -9
@pytest.mark.slow  # three stage runs: ~10 s idle, ~30 s on a busy 2-core machine
def test_kill_9_while_writing_shards_then_rerun_is_byte_identical(tmp_path: Path) -> None:
    params = _params_file(tmp_path)
    aligned = _aligned(tmp_path / "aligned", KILL_FACES)
    clean = tmp_path / "clean"
    _ok(_dlfp(params, "shard", "--in", str(aligned), "--out", str(clean)))

    out = tmp_path / "shards"
    partial = tmp_path / "shards.partial"
    process = _start(params, "shard", "--in", str(aligned), "--out", str(out))
    _wait_for(_has_tar(partial), process, "the first shard")
    _kill_9(process)
    assert partial.is_dir() and not out.exists()  # half-written output exists only under the .partial name
    # the next stage does not take it for finished output
    refused = _dlfp(params, "degrade", "--in", str(out), "--out", str(tmp_path / "pairs"))
    assert refused.returncode == 1 and "shard index missing" in refused.stderr and str(out) in refused.stderr
    assert not (tmp_path / "pairs").exists()

    _ok(_dlfp(params, "shard", "--in", str(aligned), "--out", str(out)))
    assert _digests(out) == _digests(clean)
    assert not partial.exists()


@pytest.mark.slow  # three stage runs: ~10 s idle, ~30 s on a busy 2-core machine
def test_kill_9_while_degrading_then_rerun_is_byte_identical(stage_data: dict[str, Path], tmp_path: Path) -> None:
    params, out = stage_data["params"], tmp_path / "pairs"
    partial = tmp_path / "pairs.partial"
    process = _start(params, "degrade", "--in", str(stage_data["shards"]), "--out", str(out))
    _wait_for(_has_tar(partial), process, "the first pair shard")
    _kill_9(process)
    assert partial.is_dir() and not out.exists()
    _ok(_dlfp(params, "degrade", "--in", str(stage_data["shards"]), "--out", str(out)))
    assert _digests(out) == _digests(stage_data["pairs"])
    assert not partial.exists()


@pytest.mark.slow  # three stage runs: ~10 s idle, ~30 s on a busy 2-core machine
def test_a_second_run_on_the_same_output_is_refused_and_the_first_finishes(stage_data: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    params, out = stage_data["params"], tmp_path / "pairs"
    first = _start(params, "degrade", "--in", str(stage_data["shards"]), "--out", str(out))
    _wait_for(_has_tar(tmp_path / "pairs.partial"), first, "the first run's first shard")
    os.kill(first.pid, signal.SIGSTOP)  # frozen mid-write, holding its lock, whatever the machine's speed
    try:
        second = _dlfp(params, "degrade", "--in", str(stage_data["shards"]), "--out", str(out))
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 1
    assert "being written by another dlfp run" in second.stderr and str(out) in second.stderr
    _, stderr = first.communicate(timeout=RUN_TIMEOUT_S)
    assert first.returncode == 0, stderr[-2000:]
    assert _digests(out) == _digests(stage_data["pairs"])  # the refused run changed nothing


# ---------------------------------------------------------------------------------------- damaged shards
@pytest.mark.parametrize("damage", ["truncate", "flip_byte"])
def test_damaged_shard_is_named_by_the_next_stage(stage_data: dict[str, Path], tmp_path: Path, damage: str) -> None:
    shards = tmp_path / "shards"
    shutil.copytree(stage_data["shards"], shards)
    index = json.loads((shards / "index.json").read_text())
    victim = shards / index["splits"]["test"]["shards"][1]["path"]
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    result = _dlfp(stage_data["params"], "degrade", "--in", str(shards), "--out", str(tmp_path / "pairs"))
    assert result.returncode == 1
    assert str(victim) in result.stderr and "does not match the index" in result.stderr
    assert not (tmp_path / "pairs").exists() and not (tmp_path / "pairs.partial").exists()


# ----------------------------------------------------------------------------------------------- SIGTERM
@pytest.mark.slow  # three stage runs: ~10 s idle, ~30 s on a busy 2-core machine
def test_sigterm_during_training_saves_a_checkpoint_and_resume_continues(stage_data: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    """As on a pre-empted cluster job: SIGTERM, then the same command with resume: true finishes the run."""
    iters = 8
    params = _params_file(tmp_path, train_prior={**TINY_PRIOR, "iters": iters, "resume": True})
    out = tmp_path / "prior"
    losses = tmp_path / "prior.partial" / "losses.csv"
    process = _start(params, "train_prior", "--in", str(stage_data["shards"]), "--out", str(out))
    _wait_for(lambda: losses.is_file() and len(losses.read_text().splitlines()) >= 3, process, "two steps")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    assert process.returncode == 1 and "SIGTERM" in stderr, stderr[-2000:]
    checkpoint = torch.load(tmp_path / "prior.partial" / "checkpoints" / "last.pth", weights_only=True)
    stopped_at = checkpoint["step"]
    assert 2 <= stopped_at < iters and not out.exists()

    resumed = _ok(_dlfp(params, "train_prior", "--in", str(stage_data["shards"]), "--out", str(out)))
    assert f"resuming at step {stopped_at}" in resumed.stderr
    steps = [int(line.split(",")[0]) for line in (out / "losses.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, iters + 1))  # every step once: continued, not restarted
    assert (out / "prior.pth").is_file()


# --------------------------------------------------------------------------------------------- full disk
def _mount_tmpfs(folder: Path, size_bytes: int) -> bool:
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(folder)],
                            capture_output=True)
    return result.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (the simulated test runs)")
def test_full_disk_on_a_small_tmpfs_is_a_clear_error_and_earlier_output_survives(tmp_path: Path) -> None:
    """A real full disk: a small tmpfs holds a small shard set, then a larger run into the same output fails."""
    small, large = _aligned(tmp_path / "small", SMALL_FACES), _aligned(tmp_path / "large", LARGE_FACES)
    small_bytes = sum(path.stat().st_size for path in (small / "images").iterdir())
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, 4 * small_bytes + TMPFS_SLACK_BYTES):
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        params = _params_file(tmp_path)
        out = disk / "shards"
        _ok(_dlfp(params, "shard", "--in", str(small), "--out", str(out)))
        before = _digests(out)
        result = _dlfp(params, "shard", "--in", str(large), "--out", str(out))
        assert result.returncode == 1
        assert "no space left on device" in result.stderr and "earlier outputs are intact" in result.stderr
        assert "Traceback" not in result.stderr
        assert _digests(out) == before
        assert not (disk / "shards.partial").exists()  # the failed run's half output is gone, space is free
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_full_disk_simulated_enospc_is_a_clear_error_and_earlier_output_survives(tmp_path: Path,
                                                                                monkeypatch) -> None:
    """ENOSPC simulated in the tar writer (where a full disk surfaces), for machines where no tmpfs can be mounted."""
    import webdataset as wds

    from dlfp.io.atomic import DiskFullError
    from dlfp.params import load_params
    from dlfp.stages import shard as shard_stage

    params = load_params(_params_file(tmp_path))
    aligned = _aligned(tmp_path / "aligned", 8)
    out = tmp_path / "shards"
    shard_stage.run(params, aligned, out)
    before = _digests(out)
    written = 0
    original = wds.TarWriter.write

    def fill_up(self, sample: dict) -> int:
        nonlocal written
        written += 1
        if written > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, sample)

    monkeypatch.setattr(wds.TarWriter, "write", fill_up)
    with pytest.raises(DiskFullError, match=f"no space left on device while writing {out}"):
        shard_stage.run(params, aligned, out)
    assert _digests(out) == before
    assert not (tmp_path / "shards.partial").exists()


# ---------------------------------------------------------------------------------------------- security
class _RunsCode:
    """Unpickling this calls Path.touch(marker): proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_a_pickle_with_code_is_refused_and_its_code_never_runs(tmp_path: Path) -> None:
    from dlfp.models.checkpoints import CheckpointMismatchError, read_state_dict
    from dlfp.train import prior
    from dlfp.train.engine.checkpoint import checkpoint_path, load_checkpoint
    from dlfp.train.engine.distributed import DistInfo

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"params_ema": _RunsCode(marker), "config": {}}, evil)
    with pytest.raises(CheckpointMismatchError, match=f"{evil}: not a loadable weights file"):
        read_state_dict(evil)
    with pytest.raises(Exception, match="Weights only load failed"):
        prior.load_prior(evil)
    work = tmp_path / "work"
    checkpoint_path(work).parent.mkdir(parents=True)
    shutil.copyfile(evil, checkpoint_path(work))
    with pytest.raises(Exception, match="Weights only load failed"):
        load_checkpoint(work, DistInfo())
    assert not marker.exists()


def _torch_load_calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "load" and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"]


def test_every_torch_load_in_the_package_is_weights_only() -> None:
    calls = 0
    for path in sorted((REPO / "src" / "dlfp").rglob("*.py")):
        for call in _torch_load_calls(path):
            calls += 1
            flags = {kw.arg: kw.value for kw in call.keywords}
            value = flags.get("weights_only")
            assert isinstance(value, ast.Constant) and value.value is True, f"{path}:{call.lineno}"
    assert calls > 0
