"""The parquet mirror source, row groups only: plan from the shards' footers, fetch just the byte ranges of the
row groups that hold the wanted ids (resumable, cached), and read them through a sparse file view.

Imports pyarrow (lazily), dlfp.io, dlfp.params and dlfp.stages.acquire's records and parquet only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dlfp.io.atomic import write_json_atomic
from dlfp.io.download import DownloadError, RetryPolicy, Span, build_opener, download, probe_size
from dlfp.params import ParquetMirror
from dlfp.stages.acquire.parquet import (
    not_in_mirror,
    parquet_rows,
    parse_id,
    row_group_firsts,
    row_item,
    shard_filename,
    shards_for,
)
from dlfp.stages.acquire.records import Item, Selection

PARQUET_MAGIC = b"PAR1"
FOOTER_TAIL_BYTES = 64 << 10  # what pyarrow reads first from a file's end; more when the footer is larger
ROW_GROUP_CACHE = "parquet-row-groups"


@dataclass
class _Footer:
    """A parquet file's size and its last bytes (the footer), cached beside its row groups."""

    url: str
    size: int
    tail_start: int
    tail: bytes
    sha256: str


@dataclass(frozen=True)
class _Piece:
    """One row group to fetch: its byte range in the shard, and the ids it may hold."""

    shard: int
    row_group: int
    span: Span
    path: Path
    base: int  # FFHQ id of the shard's first row, for ids by position


@dataclass
class _Plan:
    footers: dict[int, _Footer]
    pieces: list[_Piece]
    cache: Path

    def bytes_to_fetch(self) -> int:
        return sum(piece.span.length for piece in self.pieces if not piece.path.is_file())


class _SparseFile(io.RawIOBase):
    """Read-only view of a remote file of which only some byte ranges were downloaded; pyarrow reads through it
    (footer and the planned row groups), and any read outside them is an error, never silent zeros."""

    def __init__(self, name: str, size: int, pieces: dict[int, bytes]) -> None:
        super().__init__()
        self.name, self._size, self._pieces, self._position = name, size, sorted(pieces.items()), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = base + offset
        return self._position

    def read(self, size: int = -1) -> bytes:
        stop = self._size if size is None or size < 0 else min(self._size, self._position + size)
        if stop <= self._position:
            return b""
        for start, data in self._pieces:
            if start <= self._position and stop <= start + len(data):
                chunk = data[self._position - start:stop - start]
                self._position = stop
                return chunk
        raise OSError(f"{self.name}: bytes {self._position}..{stop} were not downloaded (not in a planned row group)")

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        chunk = self.read(len(buffer))
        buffer[:len(chunk)] = chunk
        return len(chunk)


def mirror_selection(mirror: ParquetMirror, wanted: range | None, cache: Path, policy: RetryPolicy,
                      probe_timeout_s: float, reason: str, hint: str) -> Selection:
    """Plan from the shards' footers (small range reads), print the one line, then fetch lazily."""
    if wanted is None:
        raise ValueError("fetching parquet row groups needs data.count or data.ffhq.id_range")
    opener = build_opener()
    shard_list = shards_for(wanted, mirror) or list(range(mirror.num_shards))
    plan = _plan_row_groups(mirror, shard_list, wanted, cache / ROW_GROUP_CACHE, policy, probe_timeout_s, opener)
    urls = [plan.footers[index].url for index in sorted({piece.shard for piece in plan.pieces})]
    planned = sum(piece.span.length for piece in plan.pieces)
    to_fetch = plan.bytes_to_fetch()
    cached = "" if to_fetch == planned else ", all cached" if to_fetch == 0 else \
        f", {_megabytes(planned - to_fetch)} of it cached"
    print(f"acquire: {reason}; downloading {len(wanted)} FFHQ faces ({len(plan.pieces)} parquet row groups, "
          f"about {_megabytes(planned)}{cached}) from {', '.join(urls) or mirror.url_template} into {plan.cache}"
          + (f"; {hint}" if hint else ""), flush=True)
    inputs = {"source": "ffhq-parquet-row-groups", "url_template": mirror.url_template, "ids": [wanted.start,
              wanted.stop], "files": {plan.footers[index].url: {"size": plan.footers[index].size,
                                                                  "footer_sha256": plan.footers[index].sha256}
                                      for index in sorted(plan.footers)},
              "row_groups": []}
    description = f"FFHQ parquet mirror ({len(plan.pieces)} row groups of {len(urls)} files)"
    items = _row_group_items(plan, mirror, wanted, policy, opener, inputs["row_groups"])
    return Selection(items, len(wanted), inputs, description)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.0f} MB" if size >= 10e6 else f"{size / 1e6:.1f} MB"


def _plan_row_groups(mirror: ParquetMirror, shard_list: list[int], wanted: range, folder: Path,
                     policy: RetryPolicy, probe_timeout_s: float,
                     opener: urllib.request.OpenerDirector) -> _Plan:
    import pyarrow.parquet as pq

    footers: dict[int, _Footer] = {}
    pieces: list[_Piece] = []
    found = 0
    for index in shard_list:
        url = mirror.url_template.format(index=index)
        shard_folder = folder / PurePosixPath(shard_filename(url, index)).stem
        footer = _footer(url, shard_folder, policy, probe_timeout_s, opener)
        footers[index] = footer
        metadata = pq.ParquetFile(_SparseFile(url, footer.size, {footer.tail_start: footer.tail})).metadata
        roots = {mirror.image_column, *([mirror.id_column] if mirror.id_column else [])}
        base = index * mirror.rows_per_shard if mirror.rows_per_shard else found
        firsts = row_group_firsts(metadata)
        for group in range(metadata.num_row_groups):
            ids = _row_group_ids(metadata.row_group(group), mirror, base + firsts[group], url)
            if ids is None or (ids[0] < wanted.stop and wanted.start <= ids[1]):
                span = _row_group_span(metadata.row_group(group), roots, footer.size, url)
                pieces.append(_Piece(index, group, span, shard_folder / f"row-group-{group:05d}.bin", base))
        found += metadata.num_rows
    return _Plan(footers, pieces, folder)


def _footer(url: str, folder: Path, policy: RetryPolicy, probe_timeout_s: float,
            opener: urllib.request.OpenerDirector) -> _Footer:
    """The cached footer when it matches its record, else: probe the size (fails fast offline), fetch the tail."""
    record_path, tail_path = folder / "footer.json", folder / "footer.bin"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        record = json.loads(record_path.read_text(encoding="utf-8"))
        tail = tail_path.read_bytes()
        if record["url"] == url and hashlib.sha256(tail).hexdigest() == record["sha256"]:
            return _Footer(url, int(record["size"]), int(record["tail_start"]), tail, record["sha256"])
    tail_path.unlink(missing_ok=True)  # a stale tail must not pass as a cached download
    size = probe_size(url, timeout_s=probe_timeout_s, opener=opener)
    if size < 12:
        raise ValueError(f"{url}: {size} bytes, too small for a parquet file")
    tail_length = min(size, FOOTER_TAIL_BYTES)
    while True:
        download(url, tail_path, span=Span(size - tail_length, size, size), policy=policy, progress=False,
                 opener=opener)
        tail = tail_path.read_bytes()
        footer_length, magic = struct.unpack("<I4s", tail[-8:])
        if magic != PARQUET_MAGIC:
            tail_path.unlink()
            raise ValueError(f"{url}: not a parquet file (its last bytes are not {PARQUET_MAGIC!r})")
        if footer_length + 8 <= tail_length or tail_length == size:
            break
        tail_path.unlink()
        tail_length = min(size, footer_length + 8)
    footer = _Footer(url, size, size - tail_length, tail, hashlib.sha256(tail).hexdigest())
    write_json_atomic(record_path, {"url": url, "size": size, "tail_start": footer.tail_start,
                                    "sha256": footer.sha256})
    return footer


def _row_group_ids(group: object, mirror: ParquetMirror, first: int, url: str) -> tuple[int, int] | None:
    """Lowest and highest FFHQ id in a row group: from the id column's statistics, else by position.

    None when the id column has no statistics (the row group is then fetched to look).
    """
    if not mirror.id_column:
        return first, first + group.num_rows - 1  # type: ignore[attr-defined]
    for column in range(group.num_columns):  # type: ignore[attr-defined]
        chunk = group.column(column)  # type: ignore[attr-defined]
        if chunk.path_in_schema == mirror.id_column and chunk.is_stats_set and chunk.statistics.has_min_max:
            return (parse_id(chunk.statistics.min, url, mirror.id_column),
                    parse_id(chunk.statistics.max, url, mirror.id_column))
    return None


def _row_group_span(group: object, roots: set[str], size: int, url: str) -> Span:
    """Bytes of the row group's column chunks for the columns read (all leaves of the image struct)."""
    starts, stops = [], []
    for column in range(group.num_columns):  # type: ignore[attr-defined]
        chunk = group.column(column)  # type: ignore[attr-defined]
        if chunk.path_in_schema.split(".")[0] not in roots:
            continue
        start = chunk.data_page_offset
        if chunk.has_dictionary_page and chunk.dictionary_page_offset:
            start = min(start, chunk.dictionary_page_offset)
        starts.append(start)
        stops.append(start + chunk.total_compressed_size)
    if not starts:
        raise ValueError(f"{url}: row group without the columns {sorted(roots)}")
    return Span(min(starts), max(stops), size)


def _row_group_items(plan: _Plan, mirror: ParquetMirror, wanted: range, policy: RetryPolicy,
                     opener: urllib.request.OpenerDirector, record: list[dict]) -> Iterator[Item]:
    """Fetch each planned row group (resumable, cached), read its rows, and note its sha256 for the receipt."""
    seen: set[int] = set()
    for piece in plan.pieces:
        footer = plan.footers[piece.shard]
        download(footer.url, piece.path, span=piece.span, policy=policy, progress=False, opener=opener)
        data = piece.path.read_bytes()
        record.append({"url": footer.url, "row_group": piece.row_group, "bytes": [piece.span.start,
                       piece.span.stop], "sha256": hashlib.sha256(data).hexdigest()})
        sparse = _SparseFile(footer.url, footer.size, {footer.tail_start: footer.tail, piece.span.start: data})
        try:
            rows = list(parquet_rows(sparse, mirror, piece.base, [piece.row_group], footer.url))
        except (OSError, ValueError) as error:  # pyarrow raises OSError for bad pages and checksum failures
            bad = piece.path.with_name(piece.path.name + ".bad")
            os.replace(piece.path, bad)
            raise DownloadError(f"{footer.url} row group {piece.row_group}: the downloaded bytes are unreadable "
                                f"({error}); moved to {bad}, the next run downloads them again") from None
        for ffhq_id, row, image in rows:
            if ffhq_id in wanted and ffhq_id not in seen:
                seen.add(ffhq_id)
                yield row_item(ffhq_id, row, image, footer.url, mirror)
    yield from not_in_mirror(wanted, seen, mirror, f"the planned row groups of {mirror.url_template}")
