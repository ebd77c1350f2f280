"""Stage `shard`: split the aligned faces and write byte-reproducible WebDataset tars with an index.

Layout: <out>/<split>/clean-NNNNNN.tar and <out>/index.json (per shard: path, sample count, sha256).
Each sample holds `gt.png` (the aligned PNG, byte for byte) and `json` (id, source, landmarks, boxes, licence,
split). The same writer and index format serve the degrade stage's pair tars.

The readers (read_index, verify_shards, iter_samples) also take streamed locations: http(s) URLs, `pipe:`
commands and brace ranges (dlfp.data.streams); streamed shards are checked against the index as they are read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import webdataset as wds
from tqdm import tqdm

from dlfp.data import streams
from dlfp.io.atomic import atomic_path, staged_output, write_json_atomic
from dlfp.io.hashing import derive_seed, file_digest
from dlfp.io.receipt import write_receipt
from dlfp.params import Params

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT = SPLITS
Split = Literal["train", "val", "test"]
INDEX_NAME = "index.json"
META_NAME = "meta.jsonl"
# Fixed tar metadata: shards must be byte-identical between runs and machines.
TAR_MTIME = 0
TAR_USER = "dlfp"
TAR_MODE = 0o444
FFHQ_TRAIN_IDS = 60000  # FFHQ's own rule: ids 0..59999 train, 60000..69999 validation (our test).
_HASH_BUCKETS = 1 << 32


class ShardCorruptError(RuntimeError):
    """A shard on disk does not match the sha256 recorded in its index."""


# ------------------------------------------------------------------------------------------------ splits
def ffhq_split(ffhq_id: int, val_ids: tuple[int, int]) -> Split:
    if ffhq_id >= FFHQ_TRAIN_IDS:
        return "test"
    return "val" if val_ids[0] <= ffhq_id < val_ids[1] else "train"


def hash_split(sample_id: str, fractions: Mapping[str, float]) -> Split:
    """Stable split from the sample id alone: adding or removing other images never moves this one."""
    position = (derive_seed("split", sample_id) % _HASH_BUCKETS) / _HASH_BUCKETS
    if position < fractions["train"]:
        return "train"
    if position < fractions["train"] + fractions["val"]:
        return "val"
    return "test"


def resolve_split_rule(rule: str, source: str) -> Literal["ffhq", "hash"]:
    if rule == "auto":
        return "ffhq" if source == "ffhq" else "hash"
    return rule  # type: ignore[return-value]


def assign_split(meta: Mapping, rule: Literal["ffhq", "hash"], fractions: Mapping[str, float],
                 val_ids: tuple[int, int]) -> Split:
    if rule == "ffhq":
        ffhq_id = meta.get("ffhq_id")
        if ffhq_id is None or ffhq_id == "":
            raise ValueError(f"sample {meta['id']}: split rule 'ffhq' needs an FFHQ id, and this image has none; "
                             "set shard.split: hash")
        return ffhq_split(int(ffhq_id), val_ids)
    # Copies of one FFHQ face (e.g. the 256 px and 1024 px files) share the split: no train/test leakage.
    ffhq_id = meta.get("ffhq_id")
    split_key = f"ffhq-{int(ffhq_id)}" if ffhq_id not in (None, "") else str(meta["id"])
    return hash_split(split_key, fractions)


# ------------------------------------------------------------------------------------------ tar writing
@dataclass
class ShardRecord:
    path: str  # relative to the index folder
    count: int
    sha256: str


@dataclass
class ShardSetWriter:
    """Writes samples into numbered tars of at most `samples_per_shard`, each renamed into place when complete."""

    root: Path
    pattern: str  # e.g. "train/clean-{:06d}.tar"
    samples_per_shard: int
    records: list[ShardRecord] = field(default_factory=list)
    _buffer: list[dict] = field(default_factory=list)

    def write(self, sample: dict) -> None:
        key = sample["__key__"]
        if "." in key:
            raise ValueError(f"sample key {key!r} contains a dot, which WebDataset readers split on")
        self._buffer.append(sample)
        if len(self._buffer) >= self.samples_per_shard:
            self._flush()

    def close(self) -> list[ShardRecord]:
        if self._buffer:
            self._flush()
        return self.records

    def _flush(self) -> None:
        relative = self.pattern.format(len(self.records))
        path = self.root / relative
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                writer = wds.TarWriter(handle, user=TAR_USER, group=TAR_USER, mode=TAR_MODE, mtime=TAR_MTIME,
                                       encoder=False)
                try:
                    for sample in self._buffer:
                        writer.write(sample)
                except BaseException:  # e.g. a full disk: close quietly, the temp file is discarded anyway
                    with contextlib.suppress(Exception):
                        writer.close()
                    raise
                writer.close()
        self.records.append(ShardRecord(relative, len(self._buffer), file_digest(path)))
        self._buffer = []


def json_bytes(payload: Mapping) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# ------------------------------------------------------------------------------------------- reading
def read_index(folder: Path | str) -> dict:
    """The shard index of a local folder or of a streamed location (a URL, `pipe:` command or brace range)."""
    if streams.is_streamed(folder):
        return streams.resolve(folder).index
    path = Path(folder) / INDEX_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: shard index missing; run the stage that writes {folder} first")
    return streams.check_index(json.loads(path.read_text(encoding="utf-8")), str(path))


def verify_shards(folder: Path | str, records: Iterable[Mapping]) -> None:
    """Check every shard against the sha256 in the index, naming the first bad one.

    Streamed shards cannot be checked before reading; iter_samples checks each one as it streams."""
    if streams.is_streamed(folder):
        log.debug("%s: streamed shards are checked against the index while they are read", folder)
        return
    for record in records:
        path = Path(folder) / record["path"]
        if not path.exists():
            raise ShardCorruptError(f"{path}: shard listed in {folder / INDEX_NAME} is missing")
        actual = file_digest(path)
        if actual != record["sha256"]:
            raise ShardCorruptError(f"{path}: sha256 {actual[:12]}... does not match the index "
                                    f"({record['sha256'][:12]}...); the file is truncated or corrupted")


def split_records(index: Mapping, split: str) -> list[dict]:
    return list(index["splits"].get(split, {}).get("shards", []))


class SplitLeakError(ValueError):
    """A sample of one split reached a reader of another (e.g. a test face in training or validation)."""


def require_split(meta: Mapping, split: str, where: str) -> None:
    """Stop when a sample's recorded split is not `split`: tuning and training must never see test faces."""
    if meta.get("split") != split:
        raise SplitLeakError(f"{where}: sample {meta.get('id')!r} belongs to split {meta.get('split')!r}, but only "
                             f"{split!r} samples may be read here")


def pair_presets(index: Mapping, split: str) -> dict[str, dict]:
    """The per-preset entries ({count, shards, params}) of one split of a pairs index (the degrade stage's).

    Readers name the split they want: training validates on "val", the reported stages read "test".
    """
    splits = index.get("splits", {})
    if split not in splits or "presets" not in splits[split]:
        raise ValueError(f"the pairs index holds no {split!r} pairs (splits: {sorted(splits)}); "
                         "rerun `dlfp degrade`")
    return dict(splits[split]["presets"])


def iter_samples(folder: Path | str, records: Iterable[Mapping], verify: bool = True) -> Iterator[dict]:
    """Yield raw samples ({'__key__', 'gt.png': bytes, 'json': bytes, ...}) from shards in index order.

    Local shards are verified before the first sample; streamed ones as each shard ends (dlfp.data.streams)."""
    records = list(records)
    if streams.is_streamed(folder):
        yield from streams.iter_streamed_samples(streams.resolve(folder), records)
        return
    urls = [str(Path(folder) / streams.check_shard_path(record["path"], str(Path(folder) / INDEX_NAME)))
            for record in records]
    if verify:
        verify_shards(folder, records)
    if not urls:
        return
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    yield from dataset


# ---------------------------------------------------------------------------------------------- stage
def _load_aligned(in_dir: Path) -> list[dict]:
    meta_path = in_dir / META_NAME
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: aligned metadata missing; run `dlfp align` first")
    rows = [json.loads(line) for line in meta_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(rows, key=lambda row: row["id"])


def run(params: Params, in_dir: Path, out_dir: Path) -> dict:
    """Assign every aligned face to train/val/test and write the clean shards and their index."""
    started = time.monotonic()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    rows = _load_aligned(in_dir)
    rule = resolve_split_rule(params.shard.split, params.data.source)
    fractions = params.shard.fractions.model_dump()
    by_split: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for row in rows:
        by_split[assign_split(row, rule, fractions, params.shard.ffhq_val_ids)].append(row)

    with staged_output(out_dir) as staging:
        index: dict = {"split_rule": rule, "fractions": fractions if rule == "hash" else None,
                       "ffhq_val_ids": list(params.shard.ffhq_val_ids) if rule == "ffhq" else None,
                       "splits": {}}
        progress = tqdm(total=len(rows), desc="shard", unit="img")
        for split in SPLITS:
            writer = ShardSetWriter(staging, f"{split}/clean-{{:06d}}.tar", params.shard.samples_per_shard)
            for row in by_split[split]:
                image_path = in_dir / "images" / f"{row['id']}.png"
                meta = {**row, "split": split}
                writer.write({"__key__": row["id"], "gt.png": image_path.read_bytes(), "json": json_bytes(meta)})
                progress.update()
            records = writer.close()
            index["splits"][split] = {"count": len(by_split[split]),
                                      "shards": [record.__dict__ for record in records]}
        progress.close()
        write_json_atomic(staging / INDEX_NAME, index)
        counts = {split: len(by_split[split]) for split in SPLITS}
        write_receipt(staging, stage="shard", params_hash=params.section_hash("data", "shard"), seed=None,
                      counts=counts, inputs={"aligned": str(in_dir)}, packages=("webdataset",))

    elapsed = time.monotonic() - started
    summary = {"counts": counts, "split_rule": rule, "seconds": round(elapsed, 1), "out": str(out_dir)}
    print(f"shard: {counts['train']} train, {counts['val']} val, {counts['test']} test ({rule} split) "
          f"in {elapsed:.1f} s -> {out_dir}")
    return summary
