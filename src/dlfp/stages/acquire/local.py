"""The folder source: images from a folder, .zip or .tar, with ids from file names and licences from a sidecar.

Ids are file names sanitised to [A-Za-z0-9_-]; on a (case-insensitive) collision the first by relative path keeps
the id and the others get `_<6 hex of sha1(relative path)>`. A `manifest.csv` beside the images with a file column
and a licence/license column gives the licence.

Imports the standard library, dlfp.ffhq and dlfp.stages.acquire's records and archives only.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import re
import stat
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from dlfp.ffhq import ffhq_id_from_name
from dlfp.stages.acquire.archives import MAX_MEMBER_BYTES, TAR_SUFFIXES, Entry, tar_entries, zip_entries
from dlfp.stages.acquire.records import Candidate, Item, Rejection, Selection

SIDECAR_NAME = "manifest.csv"  # a folder's own manifest, read for licences, never treated as an image
SIDECAR_FILE_COLUMNS = ("file", "filename", "name", "path", "image")
SIDECAR_LICENCE_COLUMNS = ("licence", "license")
ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
ID_MAX_LENGTH = 96
COLLISION_HASH_CHARS = 6


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


# ------------------------------------------------------------------------------------- folder source
def folder_selection(root: Path, count: int | None) -> Selection:
    if not root.exists():
        raise FileNotFoundError(f"data.folder {root}: no such folder or archive")
    if root.is_dir():
        entries, rejected = _walk_folder(root)
        kind = "folder"
    elif zipfile.is_zipfile(root):
        entries, rejected = zip_entries(root)
        kind = "zip"
    elif root.name.lower().endswith(TAR_SUFFIXES) or tarfile.is_tarfile(root):
        entries, rejected = tar_entries(root)
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
