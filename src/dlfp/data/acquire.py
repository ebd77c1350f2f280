"""The acquire stage: get face images from a folder/zip/tar or from FFHQ (metadata JSON, mirror, parquet).

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
import tarfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from dlfp.data.download import (
    DownloadError,
    DriveQuotaError,
    RetryPolicy,
    build_opener,
    download,
)
from dlfp.io.atomic import staged_output, write_csv_atomic
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
DOWNLOAD_THREADS = 4
PARQUET_BATCH_ROWS = 64


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
    if data.source == "folder":
        assert data.folder is not None  # the schema requires it for this source
        return _folder_selection(Path(data.folder), data.count)
    return _ffhq_selection(data.ffhq, data.count, Path(data.cache_dir))


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
    """Like Executor.map, but pulls input lazily so at most a few images per worker are held in memory."""
    if workers <= 1:
        for item in items:
            yield item if isinstance(item, Rejection) else task(item)
        return
    limit = workers * PENDING_PER_WORKER
    pending: list[Future] = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        for item in items:
            if isinstance(item, Rejection):
                yield item
                continue
            pending.append(pool.submit(task, item))
            while len(pending) >= limit:
                yield pending.pop(0).result()
        for future in pending:
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
    if ffhq.parquet is not None:
        return _parquet_selection(ffhq.parquet, ffhq, count, cache)
    policy = _policy(ffhq)
    metadata_path = download(ffhq.metadata_url, cache / "ffhq-dataset-v2.json", md5=ffhq.metadata_md5,
                             policy=policy).path
    metadata = _load_metadata(metadata_path)
    wanted = wanted_ids(ffhq.id_range, count)
    ids = sorted(int(key) for key in metadata if wanted is None or int(key) in wanted)
    candidates = [_ffhq_file(metadata[str(ffhq_id)], ffhq_id, ffhq) for ffhq_id in ids]
    inputs = {"source": "ffhq", "variant": ffhq.variant, "metadata_md5": file_digest(metadata_path, "md5"),
              "ids": [ids[0], ids[-1] + 1] if ids else []}
    description = f"FFHQ {ffhq.variant} ({len(ids)} ids from {metadata_path})"
    items = _download_all(candidates, cache / "ffhq" / ffhq.variant, policy)
    return Selection(items, len(candidates), inputs, description)


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


def _ffhq_file(entry: dict, ffhq_id: int, ffhq: FFHQSource) -> _FFHQFile:
    try:
        spec = entry[FFHQ_VARIANT_KEYS[ffhq.variant]]
        file_path = spec["file_path"]
    except (KeyError, TypeError):
        key = FFHQ_VARIANT_KEYS[ffhq.variant]
        raise ValueError(f"FFHQ metadata entry {ffhq_id}: no '{key}.file_path'") from None
    url = (ffhq.url_template.format(id=ffhq_id, variant=ffhq.variant, file_path=file_path)
           if ffhq.url_template else spec.get("file_url", ""))
    licence = (entry.get("metadata") or {}).get("license", "")
    candidate = Candidate(id=f"{ffhq_id:05d}", source=url, licence=licence, ffhq_id=ffhq_id,
                          pixel_md5=spec.get("pixel_md5"))
    suffix = PurePosixPath(file_path).suffix or ".png"
    return _FFHQFile(candidate, url, spec.get("file_md5"), f"{ffhq_id:05d}{suffix}")


def _download_all(files: list[_FFHQFile], folder: Path, policy: RetryPolicy) -> Iterator[Item]:
    """Download with a few threads (network-bound), then yield in id order; per-file failures are rejects."""
    opener = build_opener()

    def fetch(item: _FFHQFile) -> Path | Rejection:
        try:
            return download(item.url, folder / item.filename, md5=item.md5, policy=policy, progress=False,
                            opener=opener).path
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
    items = _parquet_items(mirror, shard_list, wanted, cache / "parquet", _policy(ffhq))
    return Selection(items, total, inputs, description)


def _parquet_items(mirror: ParquetMirror, shard_list: list[int], wanted: range | None, folder: Path,
                   policy: RetryPolicy) -> Iterator[Item]:
    """Rows of the needed shards, in shard order; stops once every wanted id was seen."""
    seen: set[int] = set()
    position = 0  # ids by row position when rows_per_shard is unknown: count rows of the shards read
    for index in shard_list:
        url = mirror.url_template.format(index=index)
        dest = folder / _shard_filename(url, index)
        path = download(url, dest, md5=mirror.md5.get(index), policy=policy).path
        base = index * mirror.rows_per_shard if mirror.rows_per_shard else position
        rows = 0
        for ffhq_id, row, data in _parquet_rows(path, mirror, base):
            rows += 1
            if wanted is not None and ffhq_id not in wanted:
                continue
            seen.add(ffhq_id)
            candidate = Candidate(id=f"{ffhq_id:05d}", source=f"{url}#row={row}", ffhq_id=ffhq_id)
            if data is None:
                yield Rejection(candidate.id, candidate.source, "no image bytes",
                                f"{url} row {row}: column {mirror.image_column} holds no bytes")
            else:
                yield candidate, data
        position += rows
        if wanted is not None and len(seen) >= len(wanted):
            return
    for ffhq_id in (wanted or ()):
        if ffhq_id not in seen:
            yield Rejection(f"{ffhq_id:05d}", mirror.url_template, "not in mirror",
                            f"FFHQ id {ffhq_id} was not found in shards {shard_list}")


def _shard_filename(url: str, index: int) -> str:
    name = PurePosixPath(url.split("?")[0]).name
    return name if name.endswith(".parquet") else f"shard-{index:05d}.parquet"


def _parquet_rows(path: Path, mirror: ParquetMirror, base: int) -> Iterator[tuple[int, int, bytes | None]]:
    """(ffhq_id, row number in the shard, image bytes) for each row."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    names = set(parquet.schema_arrow.names)
    columns = [mirror.image_column] + ([mirror.id_column] if mirror.id_column else [])
    missing = [name for name in columns if name not in names]
    if missing:
        raise ValueError(f"{path}: no column {missing} (columns: {sorted(names)}); "
                         "check data.ffhq.parquet.image_column / id_column")
    row = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
        images = batch.column(mirror.image_column).to_pylist()
        ids = batch.column(mirror.id_column).to_pylist() if mirror.id_column else None
        for offset, value in enumerate(images):
            ffhq_id = _parse_id(ids[offset], path, mirror.id_column) if ids is not None else base + row
            yield ffhq_id, row, _image_bytes(value)
            row += 1


def _parse_id(value: object, path: Path, column: str | None) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"{path}: id column {column!r} holds {value!r}, not an FFHQ id") from None


def _image_bytes(value: object) -> bytes | None:
    """Hugging Face image struct {'bytes': ..., 'path': ...} or plain binary."""
    if isinstance(value, dict):
        value = value.get("bytes")
    return bytes(value) if value else None
