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
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import logging
import os
import re
import stat
import struct
import tarfile
import time
import urllib.parse
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from dlfp.data.download import (
    DownloadError,
    DriveQuotaError,
    RetryPolicy,
    Span,
    build_opener,
    download,
    probe_size,
    require_web_url,
)
from dlfp.io.atomic import staged_output, write_csv_atomic, write_json_atomic
from dlfp.io.hashing import file_digest
from dlfp.io.images import ImageRejected, decode_image_bytes, encode_png
from dlfp.io.receipt import write_receipt
from dlfp.params import DataParams, FFHQSource, Params, ParquetMirror

log = logging.getLogger(__name__)

STAGE = "acquire"
IMAGES_DIR = "images"
MANIFEST_NAME = "manifest.csv"
REJECTS_NAME = "rejects.csv"
SIDECAR_NAME = "manifest.csv"  # a folder's own manifest, read for licences, never treated as an image
MANIFEST_HEADER = ("id", "source", "md5", "size", "width", "height", "licence", "ffhq_id", "note")
REJECTS_HEADER = ("id", "source", "stage", "reason", "detail")
SIDECAR_FILE_COLUMNS = ("file", "filename", "name", "path", "image")
SIDECAR_LICENCE_COLUMNS = ("licence", "license")

FFHQ_COUNT = 70_000
FFHQ_NAME = re.compile(r"^(?:ffhq[A-Za-z0-9]*_)?(\d{5})$", re.IGNORECASE)
FFHQ_VARIANT_KEYS = {"thumbs": "thumbnail", "images": "image"}
ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
ID_MAX_LENGTH = 96
COLLISION_HASH_CHARS = 6
MAX_MEMBER_BYTES = 512 << 20  # archive members claiming more are rejected unread (zip bombs)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")

MAX_WORKERS = 8
POOL_MIN_ITEMS = 32  # below this, starting worker processes costs more than it saves
PENDING_PER_WORKER = 4  # bounded queue: never hold more than this many undecoded images per worker
MAX_PENDING_BYTES = 1 << 30  # ...nor more than this many encoded bytes in all (members may be up to 512 MB each)
DOWNLOAD_THREADS = 4
PARQUET_BATCH_ROWS = 64
PARQUET_MAGIC = b"PAR1"
FOOTER_TAIL_BYTES = 64 << 10  # what pyarrow reads first from a file's end; more when the footer is larger
ROW_GROUP_CACHE = "parquet-row-groups"


class SourceUnavailableError(RuntimeError):
    """`data.source: auto` found neither the folder nor the mirror; the message names both ways out."""


# ------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Candidate:
    """One input image chosen for processing, with what is known before decoding it."""

    id: str
    source: str
    licence: str = ""
    ffhq_id: int | None = None
    note: str = ""
    pixel_md5: str | None = None  # FFHQ metadata: md5 of the decoded pixel array


@dataclass(frozen=True)
class Rejection:
    id: str
    source: str
    reason: str
    detail: str

    def row(self) -> tuple[str, ...]:
        return (self.id, self.source, STAGE, self.reason, self.detail)


@dataclass(frozen=True)
class Accepted:
    candidate: Candidate
    md5: str
    size: int
    width: int
    height: int
    note: str


Job = tuple[Candidate, bytes]
Item = Job | Rejection


@dataclass
class Selection:
    """What a source offers: jobs (in the source's own storage order), known count, receipt inputs."""

    items: Iterator[Item]
    total: int | None
    inputs: dict = field(default_factory=dict)
    description: str = ""


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
        return _folder_selection(Path(data.folder), data.count)
    return _ffhq_selection(data.ffhq, data.count, Path(data.cache_dir))


def _auto_selection(data: DataParams) -> Selection:
    """The folder when it exists (the same selection as `source: folder`), else the fallback download."""
    if data.folder and Path(data.folder).exists():
        selection = _folder_selection(Path(data.folder), data.count)
        selection.inputs["chosen_by"] = "source auto: data.folder exists"
        return selection
    fallback = data.fallback
    reason = f"data.folder {data.folder} does not exist" if data.folder else "data.folder is not set"
    count = data.count or fallback.count
    try:
        selection = _mirror_selection(fallback.parquet, wanted_ids(None, count), Path(data.cache_dir),
                                      _policy(data.ffhq), fallback.probe_timeout_s, reason,
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


def reason_category(reason: str) -> str:
    """'truncated or corrupt: broken data stream' -> 'truncated or corrupt' (the rejects.csv reason)."""
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip() or reason


# ----------------------------------------------------------------------------------------- ids
def sanitise_id(name: str) -> str:
    """File name -> id: the stem with every run of characters outside [A-Za-z0-9_-] replaced by '_'."""
    cleaned = ID_UNSAFE.sub("_", PurePosixPath(name).stem).strip("_") or "image"
    if len(cleaned) > ID_MAX_LENGTH:
        cleaned = f"{cleaned[:ID_MAX_LENGTH - 9]}_{_short_hash(cleaned, 8)}"
    return cleaned


def _short_hash(text: str, chars: int = COLLISION_HASH_CHARS) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:chars]


def assign_ids(relative_paths: Iterable[str]) -> dict[str, tuple[str, str]]:
    """relative path -> (id, note). Deterministic: depends only on the set of paths, not their order."""
    assigned: dict[str, tuple[str, str]] = {}
    owner: dict[str, str] = {}
    for rel in sorted(relative_paths):
        base = sanitise_id(rel)
        candidate, note, chars = base, "", COLLISION_HASH_CHARS
        while candidate.casefold() in owner:
            note = f"id collided with {owner[base.casefold()]}"
            candidate = f"{base}_{_short_hash(rel, chars)}"
            chars += 2
        owner[candidate.casefold()] = rel
        assigned[rel] = (candidate, note)
    return assigned


def ffhq_id_from_name(identifier: str) -> int | None:
    match = FFHQ_NAME.match(identifier)
    if not match:
        return None
    value = int(match.group(1))
    return value if value < FFHQ_COUNT else None


# ------------------------------------------------------------------------------------- folder source
@dataclass(frozen=True)
class Entry:
    """A file found in a folder or archive: its relative path, and its archive member when in one."""

    rel: str
    member: zipfile.ZipInfo | tarfile.TarInfo | None = None


def _folder_selection(root: Path, count: int | None) -> Selection:
    if not root.exists():
        raise FileNotFoundError(f"data.folder {root}: no such folder or archive")
    if root.is_dir():
        entries, rejected = _walk_folder(root)
        kind = "folder"
    elif zipfile.is_zipfile(root):
        entries, rejected = _zip_entries(root)
        kind = "zip"
    elif root.name.lower().endswith(TAR_SUFFIXES) or tarfile.is_tarfile(root):
        entries, rejected = _tar_entries(root)
        kind = "tar"
    else:
        raise ValueError(f"data.folder {root}: not a folder, .zip or .tar archive")
    licences, entries = _split_sidecars(entries, rejected, kind, root)
    chosen = _choose(entries, licences, count)
    items = _read_entries(chosen, kind, root)
    description = f"{kind} {root} ({len(chosen)} of {len(entries)} files)"
    inputs = {"source": "folder", "kind": kind, "path": str(root), "files_listed": len(entries)}
    return Selection(_chain(rejected, items), len(chosen) + len(rejected), inputs, description)


def _chain(first: list[Rejection], rest: Iterator[Item]) -> Iterator[Item]:
    yield from first
    yield from rest


def _choose(entries: list[Entry], licences: dict[str, str],
            count: int | None) -> list[tuple[Candidate, Entry]]:
    ids = assign_ids(entry.rel for entry in entries)
    chosen = []
    for entry in entries:
        identifier, note = ids[entry.rel]
        candidate = Candidate(id=identifier, source=entry.rel, licence=licences.get(entry.rel, ""),
                              ffhq_id=ffhq_id_from_name(identifier), note=note)
        chosen.append((candidate, entry))
    chosen.sort(key=lambda pair: pair[0].id)
    return chosen[:count] if count else chosen


def _read_entries(chosen: list[tuple[Candidate, Entry]], kind: str, root: Path) -> Iterator[Item]:
    """One open archive for all reads; tars in storage order (a compressed tar cannot seek back cheaply)."""
    if kind == "tar":
        chosen = sorted(chosen, key=lambda pair: pair[1].member.offset_data)  # type: ignore[union-attr]
    with _open_archive(kind, root) as archive:
        for candidate, entry in chosen:
            try:
                yield candidate, _read_entry(archive, entry, root)
            except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError) as error:
                yield Rejection(candidate.id, candidate.source, "unreadable", f"{entry.rel}: {error}")


def _open_archive(kind: str, root: Path) -> contextlib.AbstractContextManager:
    if kind == "zip":
        return zipfile.ZipFile(root)
    if kind == "tar":
        return tarfile.open(root, "r:*")
    return contextlib.nullcontext()


def _read_entry(archive: zipfile.ZipFile | tarfile.TarFile | None, entry: Entry, root: Path) -> bytes:
    if isinstance(archive, zipfile.ZipFile):
        with archive.open(entry.member) as stream:  # type: ignore[arg-type]
            return stream.read(MAX_MEMBER_BYTES + 1)
    if isinstance(archive, tarfile.TarFile):
        stream = archive.extractfile(entry.member)  # type: ignore[arg-type]
        if stream is None:
            raise OSError("member has no data")
        return stream.read()
    return (root / entry.rel).read_bytes()


def _walk_folder(root: Path) -> tuple[list[Entry], list[Rejection]]:
    entries, rejected = [], []
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(directory) / name
            rel = path.relative_to(root).as_posix()
            problem = _not_a_regular_file(path)
            if problem:
                rejected.append(Rejection("", rel, problem, f"{path}: {problem}"))
                continue
            entries.append(Entry(rel))
    return entries, rejected


def _not_a_regular_file(path: Path) -> str | None:
    try:
        mode = path.stat().st_mode  # follows symlinks: a link to a file is read like the file
    except FileNotFoundError:
        return "broken symlink"
    except OSError as error:
        return f"unreadable ({error.strerror})"
    return None if stat.S_ISREG(mode) else "not a regular file"


def unsafe_member_reason(name: str) -> str | None:
    """Why an archive member name must not be used, or None when it stays inside the archive's root."""
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or re.match(r"^[A-Za-z]:", normalised):
        return "unsafe archive path (absolute)"
    if ".." in PurePosixPath(normalised).parts:
        return "unsafe archive path (..)"
    if "\x00" in normalised:
        return "unsafe archive path (NUL byte)"
    return None


def _zip_entries(archive: Path) -> tuple[list[Entry], list[Rejection]]:
    entries, rejected = [], []
    with zipfile.ZipFile(archive) as handle:
        infos = handle.infolist()
    seen: set[str] = set()
    for info in sorted(infos, key=lambda item: item.filename):
        if info.is_dir():
            continue
        rel = info.filename.replace("\\", "/")
        problem = _zip_member_problem(info) or ("duplicate member name" if rel in seen else None)
        if problem:
            source = f"{archive.name}:{info.filename}"
            rejected.append(Rejection("", source, reason_category(problem), f"{source}: {problem}"))
            continue
        seen.add(rel)
        entries.append(Entry(rel, info))
    return entries, rejected


def _zip_member_problem(info: zipfile.ZipInfo) -> str | None:
    unsafe = unsafe_member_reason(info.filename)
    if unsafe:
        return unsafe
    unix_mode = info.external_attr >> 16
    if unix_mode and stat.S_ISLNK(unix_mode):
        return "link member (not followed)"
    if unix_mode and not stat.S_ISREG(unix_mode) and stat.S_IFMT(unix_mode):
        return "special member (device, fifo ...) ignored"
    if info.flag_bits & 0x1:
        return "encrypted member"
    if info.file_size > MAX_MEMBER_BYTES:
        return f"member too large: {info.file_size} bytes, limit {MAX_MEMBER_BYTES} (not read)"
    return None


def _tar_entries(archive: Path) -> tuple[list[Entry], list[Rejection]]:
    entries, rejected = [], []
    with tarfile.open(archive, "r:*") as handle:
        members = handle.getmembers()
    seen: set[str] = set()
    for member in sorted(members, key=lambda item: (item.name, item.offset)):
        if member.isdir():
            continue
        problem = _tar_member_problem(member) or ("duplicate member name" if member.name in seen else None)
        if problem:
            source = f"{archive.name}:{member.name}"
            rejected.append(Rejection("", source, reason_category(problem), f"{source}: {problem}"))
            continue
        seen.add(member.name)
        entries.append(Entry(member.name, member))
    return entries, rejected


def _tar_member_problem(member: tarfile.TarInfo) -> str | None:
    unsafe = unsafe_member_reason(member.name)
    if unsafe:
        return unsafe
    if member.issym() or member.islnk():
        return f"link member (not followed; points to {member.linkname})"
    if not member.isfile():
        return "special member (device, fifo ...) ignored"
    if member.size > MAX_MEMBER_BYTES:
        return f"member too large: {member.size} bytes, limit {MAX_MEMBER_BYTES} (not read)"
    return None


def _split_sidecars(entries: list[Entry], rejected: list[Rejection], kind: str,
                    root: Path) -> tuple[dict[str, str], list[Entry]]:
    """Take `manifest.csv` files out of the image list and read their licence column, if any."""
    licences: dict[str, str] = {}
    images = []
    for entry in entries:
        if PurePosixPath(entry.rel).name.lower() != SIDECAR_NAME:
            images.append(entry)
            continue
        try:
            with _open_archive(kind, root) as archive:
                text = _read_entry(archive, entry, root).decode("utf-8-sig")
            licences.update(_sidecar_licences(entry.rel, text))
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            rejected.append(Rejection("", entry.rel, "unreadable sidecar", f"{entry.rel}: {error}"))
    return licences, images


def _sidecar_licences(rel: str, text: str) -> dict[str, str]:
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        return {}
    columns = {name.strip().lower(): name for name in rows[0] if name}
    file_column = next((columns[name] for name in SIDECAR_FILE_COLUMNS if name in columns), None)
    licence_column = next((columns[name] for name in SIDECAR_LICENCE_COLUMNS if name in columns), None)
    if file_column is None or licence_column is None:
        return {}
    folder = PurePosixPath(rel).parent
    return {(folder / row[file_column].strip()).as_posix(): (row[licence_column] or "").strip()
            for row in rows if row.get(file_column)}


# --------------------------------------------------------------------------------------- FFHQ source
def _policy(ffhq: FFHQSource) -> RetryPolicy:
    return RetryPolicy(retries=ffhq.retries, backoff_s=ffhq.backoff_s, timeout_s=ffhq.timeout_s)


def wanted_ids(id_range: tuple[int, int] | None, count: int | None) -> range | None:
    """The FFHQ ids asked for: the id range (or all), cut to the first `count`; None means everything."""
    if id_range is None and count is None:
        return None
    start, stop = id_range if id_range is not None else (0, FFHQ_COUNT)
    return range(start, min(stop, start + count) if count else stop)


def _ffhq_selection(ffhq: FFHQSource, count: int | None, cache: Path) -> Selection:
    if ffhq.parquet is not None and ffhq.parquet.fetch == "row_groups":
        return _with_pixel_md5(_mirror_selection(ffhq.parquet, wanted_ids(ffhq.id_range, count), cache,
                                                 _policy(ffhq), ffhq.timeout_s, "data.source ffhq", ""), ffhq, cache)
    if ffhq.parquet is not None:
        return _with_pixel_md5(_parquet_selection(ffhq.parquet, ffhq, count, cache), ffhq, cache)
    policy = _policy(ffhq)
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
                    policy=_policy(ffhq), max_bytes=ffhq.metadata_size).path


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


# ------------------------------------------------------------------------------------ parquet mirror
def shards_for(wanted: range | None, mirror: ParquetMirror) -> list[int] | None:
    """Shard indices holding the wanted ids when rows_per_shard says where they are; None: read in order."""
    if wanted is None or mirror.rows_per_shard is None:
        return None
    needed = {ffhq_id // mirror.rows_per_shard for ffhq_id in (wanted.start, wanted.stop - 1)}
    first, last = min(needed), max(needed)
    return [index for index in range(first, last + 1) if index < mirror.num_shards]


def _parquet_selection(mirror: ParquetMirror, ffhq: FFHQSource, count: int | None, cache: Path) -> Selection:
    wanted = wanted_ids(ffhq.id_range, count)
    indices = shards_for(wanted, mirror)
    shard_list = indices if indices is not None else list(range(mirror.num_shards))
    inputs = {"source": "ffhq-parquet", "url_template": mirror.url_template, "shards": shard_list}
    description = f"FFHQ parquet mirror ({len(shard_list)} of {mirror.num_shards} shards at most)"
    total = len(wanted) if wanted is not None else None
    items = _parquet_items(mirror, shard_list, wanted, cache / "parquet", _policy(ffhq), ffhq.max_file_bytes)
    return Selection(items, total, inputs, description)


def _parquet_items(mirror: ParquetMirror, shard_list: list[int], wanted: range | None, folder: Path,
                   policy: RetryPolicy, max_bytes: int) -> Iterator[Item]:
    """Rows of the needed shards, in shard order; stops once every wanted id was seen."""
    seen: set[int] = set()
    position = 0  # ids by row position when rows_per_shard is unknown: count rows of the shards read
    for index in shard_list:
        url = mirror.url_template.format(index=index)
        dest = folder / _shard_filename(url, index)
        path = download(url, dest, md5=mirror.md5.get(index), policy=policy, max_bytes=max_bytes).path
        base = index * mirror.rows_per_shard if mirror.rows_per_shard else position
        rows = 0
        for ffhq_id, row, data in _parquet_rows(path, mirror, base):
            rows += 1
            if wanted is None or ffhq_id in wanted:
                seen.add(ffhq_id)
                yield _row_item(ffhq_id, row, data, url, mirror)
        position += rows
        if wanted is not None and len(seen) >= len(wanted):
            return
    yield from _not_in_mirror(wanted, seen, mirror, f"shards {shard_list}")


def _row_item(ffhq_id: int, row: int, data: bytes | None, url: str, mirror: ParquetMirror) -> Item:
    candidate = Candidate(id=f"{ffhq_id:05d}", source=f"{url}#row={row}", ffhq_id=ffhq_id)
    if data is None:
        return Rejection(candidate.id, candidate.source, "no image bytes",
                         f"{url} row {row}: column {mirror.image_column} holds no bytes")
    return candidate, data


def _not_in_mirror(wanted: range | None, seen: set[int], mirror: ParquetMirror, where: str) -> Iterator[Item]:
    for ffhq_id in (wanted or ()):
        if ffhq_id not in seen:
            yield Rejection(f"{ffhq_id:05d}", mirror.url_template, "not in mirror",
                            f"FFHQ id {ffhq_id} was not found in {where}")


def _shard_filename(url: str, index: int) -> str:
    name = PurePosixPath(url.split("?")[0]).name
    return name if name.endswith(".parquet") else f"shard-{index:05d}.parquet"


def _parquet_rows(path: Path | io.RawIOBase, mirror: ParquetMirror, base: int, row_groups: list[int] | None = None,
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
    firsts = _row_group_firsts(parquet.metadata)
    for group in range(parquet.num_row_groups) if row_groups is None else row_groups:
        row = firsts[group]
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group], columns=columns):
            images = batch.column(mirror.image_column).to_pylist()
            ids = batch.column(mirror.id_column).to_pylist() if mirror.id_column else None
            for offset, value in enumerate(images):
                if ids is not None:
                    ffhq_id = _parse_id(ids[offset], name, mirror.id_column)
                else:
                    ffhq_id = _id_from_image_path(value)
                    ffhq_id = base + row if ffhq_id is None else ffhq_id
                yield ffhq_id, row, _image_bytes(value)
                row += 1


def _row_group_firsts(metadata: object) -> list[int]:
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


def _parse_id(value: object, path: Path | str, column: str | None) -> int:
    try:
        return int((value.decode("ascii") if isinstance(value, bytes) else str(value)).strip())
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{path}: id column {column!r} holds {value!r}, not an FFHQ id") from None


def _image_bytes(value: object) -> bytes | None:
    """Hugging Face image struct {'bytes': ..., 'path': ...} or plain binary."""
    if isinstance(value, dict):
        value = value.get("bytes")
    return bytes(value) if value else None


# ------------------------------------------------------------------------------ parquet row groups
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


def _mirror_selection(mirror: ParquetMirror, wanted: range | None, cache: Path, policy: RetryPolicy,
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
        shard_folder = folder / PurePosixPath(_shard_filename(url, index)).stem
        footer = _footer(url, shard_folder, policy, probe_timeout_s, opener)
        footers[index] = footer
        metadata = pq.ParquetFile(_SparseFile(url, footer.size, {footer.tail_start: footer.tail})).metadata
        roots = {mirror.image_column, *([mirror.id_column] if mirror.id_column else [])}
        base = index * mirror.rows_per_shard if mirror.rows_per_shard else found
        firsts = _row_group_firsts(metadata)
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
            return (_parse_id(chunk.statistics.min, url, mirror.id_column),
                    _parse_id(chunk.statistics.max, url, mirror.id_column))
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
            rows = list(_parquet_rows(sparse, mirror, piece.base, [piece.row_group], footer.url))
        except (OSError, ValueError) as error:  # pyarrow raises OSError for bad pages and checksum failures
            bad = piece.path.with_name(piece.path.name + ".bad")
            os.replace(piece.path, bad)
            raise DownloadError(f"{footer.url} row group {piece.row_group}: the downloaded bytes are unreadable "
                                f"({error}); moved to {bad}, the next run downloads them again") from None
        for ffhq_id, row, image in rows:
            if ffhq_id in wanted and ffhq_id not in seen:
                seen.add(ffhq_id)
                yield _row_item(ffhq_id, row, image, footer.url, mirror)
    yield from _not_in_mirror(wanted, seen, mirror, f"the planned row groups of {mirror.url_template}")
