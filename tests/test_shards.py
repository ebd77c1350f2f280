"""Stage `shard`: split rules, byte-identical tars, index checksums, corruption detection."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dlfp.io.hashing import file_digest
from dlfp.params import parse_params
from dlfp.shards.format import (
    SPLITS,
    ShardCorruptError,
    ShardSetWriter,
    assign_split,
    ffhq_split,
    hash_split,
    split_records,
)
from dlfp.shards.local import iter_samples, read_index
from dlfp.stages import shard as shard_stage

REPO = Path(__file__).resolve().parents[1]


def _params(**shard_overrides):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["shard"].update(shard_overrides)
    return parse_params(raw)


def _fake_aligned(folder: Path, count: int, ffhq: bool = False) -> list[str]:
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids, lines = [], []
    for number in range(count):
        sample_id = f"{number * 7919 % 70000:05d}" if ffhq else f"face_{number:03d}"
        pixels = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        (folder / "images" / f"{sample_id}.png").write_bytes(buffer.getvalue())
        meta = {"id": sample_id, "source": f"src/{sample_id}.png", "licence": "CC",
                "ffhq_id": int(sample_id) if ffhq else None}
        lines.append(json.dumps(meta))
        ids.append(sample_id)
    (folder / "meta.jsonl").write_text("\n".join(lines) + "\n")
    return ids


def test_ffhq_rule_follows_ffhqs_own_split() -> None:
    assert ffhq_split(0, (59000, 60000)) == "train"
    assert ffhq_split(58999, (59000, 60000)) == "train"
    assert ffhq_split(59000, (59000, 60000)) == "val"
    assert ffhq_split(59999, (59000, 60000)) == "val"
    assert ffhq_split(60000, (59000, 60000)) == "test"
    assert ffhq_split(69999, (59000, 60000)) == "test"


def test_hash_split_is_stable_and_close_to_fractions() -> None:
    fractions = {"train": 0.65, "val": 0.05, "test": 0.30}
    ids = [f"img_{n}" for n in range(20000)]
    first = [hash_split(i, fractions) for i in ids]
    assert first == [hash_split(i, fractions) for i in ids]
    shares = {split: first.count(split) / len(ids) for split in SPLITS}
    for split, fraction in fractions.items():
        assert abs(shares[split] - fraction) < 0.015, (split, shares)
    # A sample's split never depends on which other samples exist.
    assert hash_split("img_5", fractions) == first[5]


def test_copies_of_one_ffhq_face_share_a_split() -> None:
    fractions = {"train": 0.5, "val": 0.0, "test": 0.5}
    for number in range(200):
        small = {"id": f"ffhq256_{number:05d}", "ffhq_id": number}
        large = {"id": f"ffhq1024_{number:05d}", "ffhq_id": number}
        assert assign_split(small, "hash", fractions, (59000, 60000)) == \
            assign_split(large, "hash", fractions, (59000, 60000))


def test_ffhq_rule_without_ids_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="has none; set shard.split: hash"):
        assign_split({"id": "x", "ffhq_id": None}, "ffhq", {}, (59000, 60000))


def test_stage_writes_identical_shards_and_a_checked_index(tmp_path: Path) -> None:
    ids = _fake_aligned(tmp_path / "aligned", 25)
    params = _params(samples_per_shard=4)
    summary = shard_stage.run(params, tmp_path / "aligned", tmp_path / "out1")
    shard_stage.run(params, tmp_path / "aligned", tmp_path / "out2")
    assert sum(summary["counts"].values()) == 25
    index = read_index(tmp_path / "out1")
    assert index["split_rule"] == "hash"
    seen = []
    for split in SPLITS:
        records = split_records(index, split)
        assert sum(r["count"] for r in records) == summary["counts"][split]
        assert all(r["count"] <= 4 for r in records)
        for record in records:
            first, second = tmp_path / "out1" / record["path"], tmp_path / "out2" / record["path"]
            assert record["path"].startswith(f"{split}/clean-")
            assert file_digest(first) == file_digest(second) == record["sha256"]
        for sample in iter_samples(tmp_path / "out1", records):
            meta = json.loads(sample["json"])
            assert meta["split"] == split and meta["id"] == sample["__key__"]
            assert sample["gt.png"] == (tmp_path / "aligned" / "images" / f"{meta['id']}.png").read_bytes()
            seen.append(meta["id"])
    assert sorted(seen) == sorted(ids)
    assert not (tmp_path / "out1.partial").exists()


def test_ffhq_source_uses_the_ffhq_rule(tmp_path: Path) -> None:
    _fake_aligned(tmp_path / "aligned", 30, ffhq=True)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["source"] = "ffhq"
    summary = shard_stage.run(parse_params(raw), tmp_path / "aligned", tmp_path / "out")
    index = read_index(tmp_path / "out")
    assert index["split_rule"] == "ffhq"
    for split in SPLITS:
        for sample in iter_samples(tmp_path / "out", split_records(index, split)):
            meta = json.loads(sample["json"])
            assert ffhq_split(meta["ffhq_id"], (59000, 60000)) == split
    assert summary["counts"]["test"] > 0 and summary["counts"]["train"] > 0


def test_corrupted_shard_is_named(tmp_path: Path) -> None:
    _fake_aligned(tmp_path / "aligned", 6)
    shard_stage.run(_params(), tmp_path / "aligned", tmp_path / "out")
    index = read_index(tmp_path / "out")
    records = split_records(index, "train")
    victim = tmp_path / "out" / records[0]["path"]
    victim.write_bytes(victim.read_bytes()[:-700])
    with pytest.raises(ShardCorruptError, match=str(victim)):
        list(iter_samples(tmp_path / "out", records))


def test_keys_with_dots_are_refused(tmp_path: Path) -> None:
    writer = ShardSetWriter(tmp_path, "x-{:06d}.tar", 10)
    with pytest.raises(ValueError, match="contains a dot"):
        writer.write({"__key__": "a.b", "json": b"{}"})


def test_missing_input_names_the_stage_to_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run `dlfp align` first"):
        shard_stage.run(_params(), tmp_path / "nothing", tmp_path / "out")
