"""The shard format: splits, the index and its records, path safety, errors, the tar writer and the member reader.

On disk: <root>/<split>/<name>-NNNNNN.tar plus <root>/index.json ({"splits": {split: {count, shards}}} for clean
shards, {"splits": {split: {"presets": {name: {count, shards, params}}}}} for the degrade stage's pairs); every
shard record holds its path (relative to the index folder), sample count and sha256. Tars are byte-reproducible
(fixed mtime, owner and mode). Every reader of shard members, local, streamed or the report's, takes them from
`tar_members`: read in memory, never extracted, each one's size checked from its header before it is read.
Readers for local folders are in dlfp.shards.local, for URLs and `pipe:` commands in dlfp.shards.streamed; both
import this module, and this module imports neither (no cycle).

Imports webdataset and dlfp.io only.
"""

from __future__ import annotations

import contextlib
import json
import re
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import webdataset as wds

from dlfp.io.atomic import atomic_path
from dlfp.io.hashing import derive_seed, file_digest

SPLITS = ("train", "val", "test")
TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT = SPLITS
PAIR_SPLITS = (VAL_SPLIT, TEST_SPLIT)  # degrade writes fixed pairs for these: val to tune on, test to report
Split = Literal["train", "val", "test"]
# Fixed tar metadata: shards must be byte-identical between runs and machines.
TAR_MTIME = 0
TAR_USER = "dlfp"
TAR_MODE = 0o444
FFHQ_TRAIN_IDS = 60000  # FFHQ's own rule: ids 0..59999 train, 60000..69999 validation (our test).
_HASH_BUCKETS = 1 << 32
MAX_MEMBER_BYTES = 64 << 20  # a shard member larger than this is no face image or metadata: the tar is refused
_WEBDATASET_META = re.compile(r"__[^/]*__($|/)")  # webdataset's own members (__key__, ...): not sample data


# An index's shard path: relative, no "..", no leading "/", nothing a shell or URL would read specially.
SHARD_PATH = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*\.tar$")


class ShardCorruptError(RuntimeError):
    """A shard on disk does not match the sha256 recorded in its index."""


class ShardMemberTooLargeError(ShardCorruptError, tarfile.ReadError):
    """A shard member whose tar header claims more than MAX_MEMBER_BYTES (a crafted or damaged tar), refused unread.

    Also a tarfile error, so that tolerant readers (the report's) treat it as a damaged tar."""


class UnsafeShardPathError(ValueError):
    """An index lists a shard path that is not a plain relative shard file name (e.g. `../x.tar`, `a.tar; cmd`)."""


# -------------------------------------------------------------------------------------- index checks
def check_shard_path(path: object, where: str) -> str:
    """`path` if it is a plain relative shard file name (SHARD_PATH); otherwise stop naming the entry."""
    if not isinstance(path, str) or not SHARD_PATH.fullmatch(path):
        raise UnsafeShardPathError(f"{where}: shard path {path!r} is not a relative shard file name "
                                   "(letters, digits, '_', '-', '/' and '.tar' only); refusing to read it")
    return path


def check_index(index: Mapping, where: str) -> dict:
    """`index` if every shard path in it is safe (check_shard_path); otherwise stop naming the entry."""
    for split_name, split in index.get("splits", {}).items():
        groups = [(f"splits.{split_name}", split)]
        groups += [(f"splits.{split_name}.presets.{name}", group) for name, group in split.get("presets", {}).items()]
        for group_name, group in groups:
            for number, record in enumerate(group.get("shards", [])):
                check_shard_path(record.get("path"), f"{where}: {group_name}.shards[{number}]")
    return dict(index)


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


# ------------------------------------------------------------------------------------------ tar reading
def tar_members(stream: IO[bytes], shard: str) -> Iterator[dict]:
    """The regular members of a tar read as a stream, as {'fname', 'data'} for webdataset's group_by_keys.

    The members webdataset's tar_file_iterator yields (links, folders and its `__meta__` members are skipped), but
    each size is checked from the header first: a member over MAX_MEMBER_BYTES raises ShardMemberTooLargeError
    naming `shard` and the member before a byte of it is read (tar_file_iterator reads every member whole).
    Members are read into memory, never extracted, so their names never reach the file system."""
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            if not info.isreg() or _WEBDATASET_META.match(info.name):
                continue
            if info.size > MAX_MEMBER_BYTES:
                raise ShardMemberTooLargeError(f"{shard}: member {info.name} claims {info.size} bytes, over the "
                                               f"{MAX_MEMBER_BYTES}-byte limit of a shard member (not read)")
            member = tar.extractfile(info)
            yield {"fname": info.name, "data": member.read() if member else b""}
            tar.members = []  # a streamed tar keeps no headers behind it


# ------------------------------------------------------------------------------------------- index
def split_records(index: Mapping, split: str) -> list[dict]:
    return list(index["splits"].get(split, {}).get("shards", []))


class SplitLeakError(ValueError):
    """A sample of one split reached a reader of another (e.g. a test face in training or validation)."""


def require_split(meta: Mapping, split: str, where: str) -> None:
    """Stop when a sample's recorded split is not `split`: tuning and training must never see test faces."""
    if meta.get("split") != split:
        raise SplitLeakError(f"{where}: sample {meta.get('id')!r} belongs to split {meta.get('split')!r}, but only "
                             f"{split!r} samples may be read here")


def check_pair_split(split: str) -> str:
    """`split` if degrade writes fixed pairs for it (PAIR_SPLITS); otherwise a ValueError naming the choices."""
    if split not in PAIR_SPLITS:
        raise ValueError(f"split {split!r} has no fixed pairs; choose one of: {', '.join(PAIR_SPLITS)}")
    return split


def pair_presets(index: Mapping, split: str) -> dict[str, dict]:
    """The per-preset entries ({count, shards, params}) of one split of a pairs index (the degrade stage's).

    Readers name the split they want: training validates on "val", the reported stages read "test".
    """
    splits = index.get("splits", {})
    if split not in splits or "presets" not in splits[split]:
        raise ValueError(f"the pairs index holds no {split!r} pairs (splits: {sorted(splits)}); "
                         "rerun `dlfp degrade`")
    return dict(splits[split]["presets"])
