"""Reading shard sets by location: local folders here, streamed locations handed to dlfp.shards.streamed.

read_index, verify_shards and iter_samples take a local folder holding index.json, or a streamed location
(an http(s) URL, a `pipe:` command or a brace range, dlfp.shards.streamed); streamed shards are checked against
the index as they are read. Local shards are checked against their index sha256 before the first sample. Both read
members with dlfp.shards.format.tar_members (sizes checked from the headers) and group them with webdataset's
group_by_keys, so a sample is the dict wds.WebDataset would give.

Imports webdataset, dlfp.io, dlfp.shards.format and dlfp.shards.streamed only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import webdataset as wds

from dlfp.io.hashing import file_digest
from dlfp.layout import INDEX_NAME
from dlfp.shards import streamed as streams
from dlfp.shards.format import ShardCorruptError, check_index, check_shard_path, tar_members

log = logging.getLogger(__name__)


def read_index(folder: Path | str) -> dict:
    """The shard index of a local folder or of a streamed location (a URL, `pipe:` command or brace range)."""
    if streams.is_streamed(folder):
        return streams.resolve(folder).index
    path = Path(folder) / INDEX_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: shard index missing; run the stage that writes {folder} first")
    return check_index(json.loads(path.read_text(encoding="utf-8")), str(path))


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


def iter_samples(folder: Path | str, records: Iterable[Mapping], verify: bool = True) -> Iterator[dict]:
    """Yield raw samples ({'__key__', 'gt.png': bytes, 'json': bytes, ...}) from shards in index order.

    Local shards are verified before the first sample; streamed ones as each shard ends (dlfp.shards.streamed)."""
    records = list(records)
    if streams.is_streamed(folder):
        yield from streams.iter_streamed_samples(streams.resolve(folder), records)
        return
    paths = [Path(folder) / check_shard_path(record["path"], str(Path(folder) / INDEX_NAME)) for record in records]
    if verify:
        verify_shards(folder, records)
    for path in paths:
        yield from iter_local_shard(path)


def iter_local_shard(path: Path) -> Iterator[dict]:
    """Raw samples of one local shard, the dicts wds.WebDataset gives (`__key__`, `__url__`, `__local_path__`,
    one entry per extension), with every member's size checked from its header before it is read."""
    url = str(path)
    with open(path, "rb") as stream:
        files = ({**entry, "__url__": url, "__local_path__": url} for entry in tar_members(stream, url))
        yield from wds.tariterators.group_by_keys(files)
