"""The parquet mirror source, whole shards: download each needed shard file, read the wanted FFHQ ids' rows.

A row's FFHQ id comes from the id column, else from an image path named like an FFHQ id (`01234.png`), else from
its position (shard index x rows_per_shard + row). The row reading here also serves dlfp.stages.acquire.row_groups.

Imports pyarrow (lazily), dlfp.io, dlfp.params, dlfp.ffhq and dlfp.stages.acquire.records only.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from dlfp.ffhq import ffhq_id_from_name
from dlfp.io.download import RetryPolicy, download
from dlfp.params import ParquetMirror
from dlfp.stages.acquire.records import Candidate, Item, Rejection

PARQUET_BATCH_ROWS = 64


def shards_for(wanted: range | None, mirror: ParquetMirror) -> list[int] | None:
    """Shard indices holding the wanted ids when rows_per_shard says where they are; None: read in order."""
    if wanted is None or mirror.rows_per_shard is None:
        return None
    needed = {ffhq_id // mirror.rows_per_shard for ffhq_id in (wanted.start, wanted.stop - 1)}
    first, last = min(needed), max(needed)
    return [index for index in range(first, last + 1) if index < mirror.num_shards]


def parquet_items(mirror: ParquetMirror, shard_list: list[int], wanted: range | None, folder: Path,
                   policy: RetryPolicy, max_bytes: int) -> Iterator[Item]:
    """Rows of the needed shards, in shard order; stops once every wanted id was seen."""
    seen: set[int] = set()
    position = 0  # ids by row position when rows_per_shard is unknown: count rows of the shards read
    for index in shard_list:
        url = mirror.url_template.format(index=index)
        dest = folder / shard_filename(url, index)
        path = download(url, dest, md5=mirror.md5.get(index), policy=policy, max_bytes=max_bytes).path
        base = index * mirror.rows_per_shard if mirror.rows_per_shard else position
        rows = 0
        for ffhq_id, row, data in parquet_rows(path, mirror, base):
            rows += 1
            if wanted is None or ffhq_id in wanted:
                seen.add(ffhq_id)
                yield row_item(ffhq_id, row, data, url, mirror)
        position += rows
        if wanted is not None and len(seen) >= len(wanted):
            return
    yield from not_in_mirror(wanted, seen, mirror, f"shards {shard_list}")


def row_item(ffhq_id: int, row: int, data: bytes | None, url: str, mirror: ParquetMirror) -> Item:
    candidate = Candidate(id=f"{ffhq_id:05d}", source=f"{url}#row={row}", ffhq_id=ffhq_id)
    if data is None:
        return Rejection(candidate.id, candidate.source, "no image bytes",
                         f"{url} row {row}: column {mirror.image_column} holds no bytes")
    return candidate, data


def not_in_mirror(wanted: range | None, seen: set[int], mirror: ParquetMirror, where: str) -> Iterator[Item]:
    for ffhq_id in (wanted or ()):
        if ffhq_id not in seen:
            yield Rejection(f"{ffhq_id:05d}", mirror.url_template, "not in mirror",
                            f"FFHQ id {ffhq_id} was not found in {where}")


def shard_filename(url: str, index: int) -> str:
    name = PurePosixPath(url.split("?")[0]).name
    return name if name.endswith(".parquet") else f"shard-{index:05d}.parquet"


def parquet_rows(path: Path | io.RawIOBase, mirror: ParquetMirror, base: int, row_groups: list[int] | None = None,
                  name: str | None = None) -> Iterator[tuple[int, int, bytes | None]]:
    """(ffhq_id, row number in the shard, image bytes) for each row (of `row_groups` only, when given)."""
    import pyarrow.parquet as pq

    name = name or str(path)
    parquet = pq.ParquetFile(path, page_checksum_verification=True)  # pages that carry a CRC are checked
    names = set(parquet.schema_arrow.names)
    columns = [mirror.image_column] + ([mirror.id_column] if mirror.id_column else [])
    missing = [column for column in columns if column not in names]
    if missing:
        raise ValueError(f"{name}: no column {missing} (columns: {sorted(names)}); "
                         "check the mirror's image_column / id_column")
    firsts = row_group_firsts(parquet.metadata)
    for group in range(parquet.num_row_groups) if row_groups is None else row_groups:
        row = firsts[group]
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group], columns=columns):
            images = batch.column(mirror.image_column).to_pylist()
            ids = batch.column(mirror.id_column).to_pylist() if mirror.id_column else None
            for offset, value in enumerate(images):
                if ids is not None:
                    ffhq_id = parse_id(ids[offset], name, mirror.id_column)
                else:
                    ffhq_id = _id_from_image_path(value)
                    ffhq_id = base + row if ffhq_id is None else ffhq_id
                yield ffhq_id, row, _image_bytes(value)
                row += 1


def row_group_firsts(metadata: object) -> list[int]:
    """Index of the first row of each row group in its file."""
    firsts, total = [], 0
    for group in range(metadata.num_row_groups):  # type: ignore[attr-defined]
        firsts.append(total)
        total += metadata.row_group(group).num_rows  # type: ignore[attr-defined]
    return firsts


def _id_from_image_path(value: object) -> int | None:
    """Hugging Face image structs keep the file name: `01234.png` names FFHQ id 1234."""
    path = value.get("path") if isinstance(value, dict) else None
    return ffhq_id_from_name(PurePosixPath(path).stem) if isinstance(path, str) and path else None


def parse_id(value: object, path: Path | str, column: str | None) -> int:
    try:
        return int((value.decode("ascii") if isinstance(value, bytes) else str(value)).strip())
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{path}: id column {column!r} holds {value!r}, not an FFHQ id") from None


def _image_bytes(value: object) -> bytes | None:
    """Hugging Face image struct {'bytes': ..., 'path': ...} or plain binary."""
    if isinstance(value, dict):
        value = value.get("bytes")
    return bytes(value) if value else None
