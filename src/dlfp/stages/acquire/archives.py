"""Listing zip and tar archives safely for the folder source: no path leaves the root, links are never followed.

Members with absolute paths, drive letters, '..' or NUL bytes are rejected, as are links, devices, encrypted
and oversized members (zip bombs); nothing is ever extracted to a path taken from the archive.

Imports the standard library and dlfp.stages.acquire.records only.
"""

from __future__ import annotations

import re
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dlfp.stages.acquire.records import Rejection, reason_category

MAX_MEMBER_BYTES = 512 << 20  # archive members claiming more are rejected unread (zip bombs)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


@dataclass(frozen=True)
class Entry:
    """A file found in a folder or archive: its relative path, and its archive member when in one."""

    rel: str
    member: zipfile.ZipInfo | tarfile.TarInfo | None = None



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


def zip_entries(archive: Path) -> tuple[list[Entry], list[Rejection]]:
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


def tar_entries(archive: Path) -> tuple[list[Entry], list[Rejection]]:
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
