"""The test split is only for testing: no test face reaches the training stream or the validator.

A mini project of real faces goes through the real shard, degrade, train_prior and train stages; the ids that
training really decoded (recorded by wrapping `make_sample`) and the ids it validated on (from its receipt) are
compared with the test pairs. Pointing validation back at the test pairs makes these tests fail.
"""

from __future__ import annotations

from pathlib import Path

import _dlfp_test_faces as faces  # tests/_faces.py, registered by conftest.py
import _dlfp_test_prereq as prereq  # tests/_prereq.py, registered by conftest.py
import pytest
import torch
import yaml

from dlfp.ffhq import ffhq_id_from_name
from dlfp.io.atomic import write_json_atomic
from dlfp.io.receipt import read_receipt
from dlfp.params import parse_params
from dlfp.shards import format as shard_format
from dlfp.shards.format import SplitLeakError, pair_presets, split_records
from dlfp.shards.local import iter_samples, read_index
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
