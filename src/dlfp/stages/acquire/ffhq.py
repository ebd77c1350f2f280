"""The FFHQ source: per-file downloads listed by FFHQ's metadata JSON (official or a mirror's url_template), and
the pixel-md5 check that metadata gives parquet mirror rows.

Imports dlfp.io, dlfp.params, dlfp.ffhq and dlfp.stages.acquire's records, parquet and row_groups only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from dlfp.ffhq import FFHQ_COUNT
from dlfp.io.download import DownloadError, DriveQuotaError, RetryPolicy, build_opener, download, require_web_url
from dlfp.io.hashing import file_digest
from dlfp.params import FFHQSource, ParquetMirror
from dlfp.stages.acquire.parquet import parquet_items, shards_for
from dlfp.stages.acquire.records import Candidate, Item, Rejection, Selection
from dlfp.stages.acquire.row_groups import mirror_selection

FFHQ_VARIANT_KEYS = {"thumbs": "thumbnail", "images": "image"}
DOWNLOAD_THREADS = 4


def retry_policy(ffhq: FFHQSource) -> RetryPolicy:
    return RetryPolicy(retries=ffhq.retries, backoff_s=ffhq.backoff_s, timeout_s=ffhq.timeout_s)


def wanted_ids(id_range: tuple[int, int] | None, count: int | None) -> range | None:
    """The FFHQ ids asked for: the id range (or all), cut to the first `count`; None means everything."""
    if id_range is None and count is None:
        return None
    start, stop = id_range if id_range is not None else (0, FFHQ_COUNT)
    return range(start, min(stop, start + count) if count else stop)


def ffhq_selection(ffhq: FFHQSource, count: int | None, cache: Path) -> Selection:
    if ffhq.parquet is not None and ffhq.parquet.fetch == "row_groups":
        selection = mirror_selection(ffhq.parquet, wanted_ids(ffhq.id_range, count), cache, retry_policy(ffhq),
                                     ffhq.timeout_s, "data.source ffhq", "")
        return _with_pixel_md5(selection, ffhq, cache)
    if ffhq.parquet is not None:
        return _with_pixel_md5(parquet_selection(ffhq.parquet, ffhq, count, cache), ffhq, cache)
    policy = retry_policy(ffhq)
    metadata_path = _metadata_path(ffhq, cache)
    metadata = _load_metadata(metadata_path)
    wanted = wanted_ids(ffhq.id_range, count)
    ids = sorted(int(key) for key in metadata if wanted is None or int(key) in wanted)
    candidates = [_ffhq_file(metadata[str(ffhq_id)], ffhq_id, ffhq) for ffhq_id in ids]
    inputs = {"source": "ffhq", "variant": ffhq.variant, "metadata_md5": file_digest(metadata_path, "md5"),
              "ids": [ids[0], ids[-1] + 1] if ids else []}
    description = f"FFHQ {ffhq.variant} ({len(ids)} ids from {metadata_path})"
    items = _download_all(candidates, cache / "ffhq" / ffhq.variant, policy)
    return Selection(items, len(candidates), inputs, description)


def _metadata_path(ffhq: FFHQSource, cache: Path) -> Path:
    """The FFHQ metadata JSON, downloaded once, checked against its pinned md5 and capped at its size."""
    return download(ffhq.metadata_url, cache / "ffhq-dataset-v2.json", md5=ffhq.metadata_md5,
                    policy=retry_policy(ffhq), max_bytes=ffhq.metadata_size).path


def _with_pixel_md5(selection: Selection, ffhq: FFHQSource, cache: Path) -> Selection:
    """Parquet rows of a mirror that declares its FFHQ variant get the metadata's pixel md5, which process_job
    checks after decoding (a mismatch is a 'pixel md5 mismatch' reject)."""
    if ffhq.parquet is None or ffhq.parquet.variant is None:
        return selection
    key = FFHQ_VARIANT_KEYS[ffhq.parquet.variant]
    metadata = _load_metadata(_metadata_path(ffhq, cache))
    sums = {int(ffhq_id): (entry.get(key) or {}).get("pixel_md5") for ffhq_id, entry in metadata.items()}

    def checked(items: Iterator[Item]) -> Iterator[Item]:
        for item in items:
            if isinstance(item, Rejection):
                yield item
            else:
                candidate, data = item
                yield replace(candidate, pixel_md5=sums.get(candidate.ffhq_id)), data

    return replace(selection, items=checked(selection.items),
                               inputs={**selection.inputs, "pixel_md5_from": "ffhq metadata"})


def _load_metadata(path: Path) -> dict:
    try:
        metadata = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid FFHQ metadata JSON ({error}); "
                         "delete it to download again") from None
    if not isinstance(metadata, dict) or not all(key.isdigit() for key in metadata):
        raise ValueError(f"{path}: expected FFHQ metadata (an object keyed by '0'..'69999')")
    return metadata


@dataclass(frozen=True)
class _FFHQFile:
    candidate: Candidate
    url: str
    md5: str | None
    filename: str
    max_bytes: int


def _ffhq_file(entry: dict, ffhq_id: int, ffhq: FFHQSource) -> _FFHQFile:
    try:
        spec = entry[FFHQ_VARIANT_KEYS[ffhq.variant]]
        file_path = spec["file_path"]
    except (KeyError, TypeError):
        key = FFHQ_VARIANT_KEYS[ffhq.variant]
        raise ValueError(f"FFHQ metadata entry {ffhq_id}: no '{key}.file_path'") from None
    url = (ffhq.url_template.format(id=ffhq_id, variant=ffhq.variant, file_path=file_path)
           if ffhq.url_template else require_web_url(str(spec.get("file_url", "")), f"FFHQ metadata {ffhq_id}"))
    licence = (entry.get("metadata") or {}).get("license", "")
    candidate = Candidate(id=f"{ffhq_id:05d}", source=url, licence=licence, ffhq_id=ffhq_id,
                          pixel_md5=spec.get("pixel_md5"))
    suffix = PurePosixPath(file_path).suffix or ".png"
    size = spec.get("file_size")
    max_bytes = int(size) if isinstance(size, int) and size > 0 else ffhq.max_file_bytes
    return _FFHQFile(candidate, url, spec.get("file_md5"), f"{ffhq_id:05d}{suffix}", max_bytes)


def _download_all(files: list[_FFHQFile], folder: Path, policy: RetryPolicy) -> Iterator[Item]:
    """Download with a few threads (network-bound), then yield in id order; per-file failures are rejects."""
    opener = build_opener()

    def fetch(item: _FFHQFile) -> Path | Rejection:
        try:
            return download(item.url, folder / item.filename, md5=item.md5, policy=policy, progress=False,
                            opener=opener, max_bytes=item.max_bytes).path
        except DriveQuotaError:
            raise
        except DownloadError as error:
            return Rejection(item.candidate.id, item.url, _download_reason(error), str(error))

    pool = ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS)
    try:
        with tqdm(total=len(files), desc="download", unit="file", leave=False) as bar:
            futures = [pool.submit(fetch, item) for item in files]
            for item, future in zip(files, futures, strict=True):
                result = future.result()
                bar.update(1)
                yield result if isinstance(result, Rejection) else (item.candidate, result.read_bytes())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a quota error must not leave thousands queued


def _download_reason(error: DownloadError) -> str:
    names = {"NotFoundError": "not found", "ChecksumError": "checksum mismatch"}
    return names.get(type(error).__name__, "download failed")


def parquet_selection(mirror: ParquetMirror, ffhq: FFHQSource, count: int | None, cache: Path) -> Selection:
    wanted = wanted_ids(ffhq.id_range, count)
    indices = shards_for(wanted, mirror)
    shard_list = indices if indices is not None else list(range(mirror.num_shards))
    inputs = {"source": "ffhq-parquet", "url_template": mirror.url_template, "shards": shard_list}
    description = f"FFHQ parquet mirror ({len(shard_list)} of {mirror.num_shards} shards at most)"
    total = len(wanted) if wanted is not None else None
    items = parquet_items(mirror, shard_list, wanted, cache / "parquet", retry_policy(ffhq), ffhq.max_file_bytes)
    return Selection(items, total, inputs, description)
