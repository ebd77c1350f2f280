"""The test split is only for testing: no test face reaches the training stream, the validator or a tuning run.

A mini project of real faces goes through the real shard, degrade, train_prior and train stages; the ids that
training really decoded (recorded by wrapping `make_sample`) and the ids it validated on (from its receipt) are
compared with the test pairs. Pointing validation back at the test pairs makes these tests fail.

Tuning reads val only: `dlfp restore --split val` and `dlfp evaluate --split val` read exactly the val pairs, a
restored folder of one split is never scored as the other, and the pipeline (dvc.yaml, the Snakemake rules) runs
the reported stages on the test split, so the test pairs are read once, for the reported figures.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import _dlfp_test_faces as faces  # tests/_faces.py, registered by conftest.py
import _dlfp_test_prereq as prereq  # tests/_prereq.py, registered by conftest.py
import pytest
import torch
import yaml

from dlfp import cli
from dlfp.ffhq import ffhq_id_from_name
from dlfp.io.atomic import write_json_atomic
from dlfp.io.receipt import read_receipt
from dlfp.params import parse_params
from dlfp.shards import format as shard_format
from dlfp.shards.format import TEST_SPLIT, VAL_SPLIT, SplitLeakError, pair_presets, split_records
from dlfp.shards.local import iter_samples, read_index
from dlfp.stages import evaluate as evaluate_stage
from dlfp.stages import restore as restore_stage
from dlfp.stages import train as train_stage
from dlfp.stages import train_prior as train_prior_stage
from dlfp.train import data as train_data
from dlfp.train import gfpgan, prior

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
FACE_COUNT = 16
FRACTIONS = {"train": 0.5, "val": 0.2, "test": 0.3}
TINY_NET = dict(out_size=SIZE, num_style_feat=32, num_mlp=1, channel_multiplier=1, narrow=0.0625)
QUIET = dict(workers=0, tensorboard=False, threads=1, batch_size=2, shuffle_buffer=4, checkpoint_every=100,
             sample_every=100)
MIN_SHARED_VAL_FACES = 80


def _params():
    raw = {"seed": 5, "data": {"source": "folder", "folder": "unused", "size": SIZE},
           "shard": {"split": "hash", "fractions": FRACTIONS, "samples_per_shard": 4},
           "degrade": {"workers": 1, "presets": {"moderate": {"blur_sigma": [1.0, 3.0], "downscale": [2.0, 3.0]}}},
           "train_prior": {**TINY_NET, **QUIET, "iters": 1},
           "train": {**QUIET, "iters": 3, "val_every": 1, "perceptual_network": "off", "identity_network": "off",
                     "val_preset": "moderate", "val_count": None, "preset": "moderate"}}
    return parse_params(raw)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Real faces through shard -> degrade -> train_prior -> train, recording every id training decodes."""
    paths = faces.face_paths(FACE_COUNT, "*.png")
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("splits")
    params = _params()
    faces.build(root, params, paths, SIZE, ids=[path.stem for path in paths])
    train_prior_stage.run(params, root / "shards", root / "prior")

    decoded: list[str] = []
    original = train_data.make_sample

    def recording(gt_png: bytes, meta: dict, epoch: int, recipe: train_data.SampleRecipe) -> dict:
        decoded.append(str(meta["id"]))
        return original(gt_png, meta, epoch, recipe)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_data, "make_sample", recording)
        train_stage.run(params, root / "shards", root / "prior" / prior.PRIOR_FILE, root / "pairs", root / "gfpgan")
    shard_index = read_index(root / "shards")
    ids = {split: {s["__key__"] for s in iter_samples(root / "shards", split_records(shard_index, split))}
           for split in ("train", "val", "test")}
    return {"root": root, "decoded": decoded, "ids": ids}


def _pair_ids(pairs_dir: Path, split: str) -> set[str]:
    presets = pair_presets(read_index(pairs_dir), split)
    return {s["__key__"] for entry in presets.values() for s in iter_samples(pairs_dir, entry["shards"])}


def _rewired(source: Path, out: Path, listed: str, as_split: str) -> Path:
    """A copy of a shard or pair folder (tars linked) whose index lists the `listed` split's tars as `as_split`."""
    index = read_index(source)
    index["splits"][as_split] = index["splits"][listed]
    for path in source.rglob("*.tar"):
        target = out / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path)
    write_json_atomic(out / "index.json", index)
    return out


def test_every_split_is_populated_and_pairs_follow_the_shard_split(project: dict) -> None:
    ids, pairs = project["ids"], project["root"] / "pairs"
    assert all(len(ids[split]) >= 2 for split in ids), {split: len(v) for split, v in ids.items()}
    assert _pair_ids(pairs, "val") == ids["val"] and _pair_ids(pairs, "test") == ids["test"]


def test_no_test_id_reaches_the_training_stream_or_the_validator(project: dict) -> None:
    ids, root = project["ids"], project["root"]
    test_ids = _pair_ids(root / "pairs", "test")
    decoded = set(project["decoded"])
    assert decoded and decoded <= ids["train"] and not decoded & test_ids
    validation = read_receipt(root / "gfpgan")["validation_pairs"]
    assert validation["split"] == "val" and set(validation["ids"]) == ids["val"]
    assert not set(validation["ids"]) & test_ids
    rows = (root / "gfpgan" / gfpgan.VALIDATION_CSV).read_text().splitlines()
    assert all(int(row.split(",")[1]) == len(ids["val"]) for row in rows[1:])  # the "pairs" column


def test_validation_pointed_at_test_pairs_stops_naming_the_sample(project: dict, tmp_path: Path) -> None:
    """An index whose 'val' entry lists the test tars (a miswired degrade) is refused, not silently used."""
    rewired = _rewired(project["root"] / "pairs", tmp_path / "pairs", listed="test", as_split="val")
    with pytest.raises(SplitLeakError, match=r"belongs to split 'test'"):
        gfpgan.load_val_pairs(rewired, "moderate", SIZE)


def test_training_stream_refuses_test_shards_listed_as_train(project: dict, tmp_path: Path) -> None:
    rewired = _rewired(project["root"] / "shards", tmp_path / "shards", listed="test", as_split="train")
    stream = train_data.ShardStream(rewired, train_data.train_records(rewired),
                                    train_data.SampleRecipe(seed=1, out_size=SIZE))
    with pytest.raises(SplitLeakError, match="training stream"):
        next(iter(stream))


def test_the_hash_split_gives_val_enough_shared_faces() -> None:
    """params.yaml's fractions on the 1,140 shared faces: val must hold enough faces to tune on."""
    prereq.require(faces.FACES.is_dir(), f"{faces.FACES} is missing")
    params = parse_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    fractions = params.shard.fractions.model_dump()
    counts = {"train": 0, "val": 0, "test": 0}
    for path in faces.FACES.iterdir():
        if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            meta = {"id": path.stem, "ffhq_id": ffhq_id_from_name(path.stem)}
            counts[shard_format.assign_split(meta, "hash", fractions, params.shard.ffhq_val_ids)] += 1
    assert counts["val"] >= MIN_SHARED_VAL_FACES, counts
    assert counts["test"] >= 300, counts  # the test set did not shrink to feed val


# ------------------------------------------------------------------------------------- tuning on val
TUNING_FACES = 8
TUNING_FRACTIONS = {"train": 0.0, "val": 0.5, "test": 0.5}
TUNING_PRESET = "mild"


def _tuning_params(tmp: Path):
    """Baselines only (gfpgan 'not run': no weights), one preset, evaluated on the CPU."""
    return faces.stage_params((TUNING_PRESET,), TUNING_FRACTIONS, 3,
                              restore=dict(weights=str(tmp / "absent.pth"), device="cpu", threads=1),
                              evaluate=dict(device="cpu", threads=1, batch_size=4, headline_preset=TUNING_PRESET))


@pytest.fixture(scope="module")
def tuning(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Real faces at 128 px through shard and degrade (val and test pairs), then restore on each split."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tuning")
    params = _tuning_params(root)
    faces.build(root, params, faces.face_paths(TUNING_FACES), faces.MINI_SIZE)
    ids = {split: _pair_ids(root / "pairs", split) for split in (VAL_SPLIT, TEST_SPLIT)}
    assert all(len(found) >= 2 for found in ids.values()), ids  # both splits hold faces to score
    restore_stage.run(params, root / "pairs", root / "restored-val", split=VAL_SPLIT)
    restore_stage.run(params, root / "pairs", root / "restored-test")  # the pipeline's call: no split given
    return {"root": root, "params": params, "ids": ids}


def _restored_ids(folder: Path) -> dict[str, set[str]]:
    """{restorer/preset: ids} of a restore-stage folder, from its index."""
    index = read_index(folder)
    return {f"{name}/{preset}": {s["__key__"] for s in iter_samples(folder, entry["shards"])}
            for name, restorer in index["restorers"].items() if restorer["status"] == "ok"
            for preset, entry in restorer["presets"].items()}


def test_restore_of_the_val_split_writes_only_val_ids_and_records_it(tuning: dict) -> None:
    root, ids = tuning["root"], tuning["ids"]
    for folder, split in ((root / "restored-val", VAL_SPLIT), (root / "restored-test", TEST_SPLIT)):
        restored = _restored_ids(folder)
        assert set(restored) == {f"{name}/{TUNING_PRESET}" for name in ("lq", "bicubic")}, folder
        assert all(found == ids[split] for found in restored.values()), (folder, restored, ids)
        assert read_index(folder)["split"] == split and read_receipt(folder)["split"] == split


def test_restore_refuses_test_pairs_listed_as_val(tuning: dict, tmp_path: Path) -> None:
    """A miswired pairs index (its val entry lists the test tars) stops a val restore naming the sample."""
    rewired = _rewired(tuning["root"] / "pairs", tmp_path / "pairs", listed=TEST_SPLIT, as_split=VAL_SPLIT)
    with pytest.raises(SplitLeakError, match=r"val pairs of preset mild: sample .* belongs to split 'test'"):
        restore_stage.run(tuning["params"], rewired, tmp_path / "restored", split=VAL_SPLIT)
    assert not (tmp_path / "restored").exists()


def test_evaluate_of_the_val_split_scores_exactly_the_val_ids(tuning: dict, tmp_path: Path) -> None:
    root, ids = tuning["root"], tuning["ids"]
    metrics_path = tmp_path / "metrics.json"
    result = evaluate_stage.run(tuning["params"], root / "pairs", root / "restored-val", tmp_path / "evaluation",
                                metrics_path, split=VAL_SPLIT)
    rows = (tmp_path / "evaluation" / "per_image.csv").read_text().splitlines()[1:]
    scored: dict[str, set[str]] = {}
    for row in rows:
        preset, restorer, sample_id = row.split(",")[:3]
        scored.setdefault(f"{restorer}/{preset}", set()).add(sample_id)
    assert scored == {f"{name}/{TUNING_PRESET}": ids[VAL_SPLIT] for name in ("lq", "bicubic")}
    assert len(rows) == 2 * len(ids[VAL_SPLIT])
    summary = json.loads((tmp_path / "evaluation" / "summary.json").read_text())
    metrics = json.loads(metrics_path.read_text())
    assert summary["split"] == metrics["split"] == read_receipt(tmp_path / "evaluation")["split"] == VAL_SPLIT
    assert result["split"] == VAL_SPLIT
    assert summary["results"][TUNING_PRESET]["bicubic"]["count"] == len(ids[VAL_SPLIT])
    assert summary["results"][TUNING_PRESET]["bicubic"]["gallery_faces"] == len(ids[VAL_SPLIT])


@pytest.mark.parametrize(("restored", "split"), [("restored-test", VAL_SPLIT), ("restored-val", TEST_SPLIT)])
def test_evaluate_refuses_a_restored_folder_of_the_other_split(tuning: dict, tmp_path: Path, restored: str,
                                                               split: str) -> None:
    folder = tuning["root"] / restored
    other = VAL_SPLIT if split == TEST_SPLIT else TEST_SPLIT
    with pytest.raises(ValueError, match=rf"{folder}: restored from the '{other}' pairs, but evaluate reads the "
                                         rf"'{split}' pairs"):
        evaluate_stage.run(tuning["params"], tuning["root"] / "pairs", folder, tmp_path / "evaluation",
                           tmp_path / "metrics.json", split=split)
    assert not (tmp_path / "evaluation").exists() and not (tmp_path / "metrics.json").exists()


def test_the_pipeline_runs_the_reported_stages_on_the_test_split() -> None:
    """dvc.yaml and the Snakemake rules never pass --split: restore and evaluate default to test, so only a manual
    tuning run reads val, and the pipeline reads the test pairs once, for the reported figures."""
    wiring = [REPO / "dvc.yaml", REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    assert all("--split" not in path.read_text(encoding="utf-8") for path in wiring)
    parser = cli.build_parser()
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in (("restore", restore_stage), ("evaluate", evaluate_stage)):
        args = parser.parse_args(stages[name]["cmd"].split()[1:])
        assert args.stage == name and args.split is None, name  # the stage's default applies (test_cli.py)
        assert inspect.signature(stage.run).parameters["split"].default == TEST_SPLIT, name
