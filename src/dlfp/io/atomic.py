"""Atomic file writes and staged output folders, so a killed stage never leaves output that looks finished."""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

PARTIAL_SUFFIX = ".partial"
OLD_SUFFIX = ".dlfp-old"  # the previous output, moved aside while the new one is renamed in (swap_into_place)


def _default_file_mode() -> int:
    """The mode open() would give a new file; mkstemp's private 0600 would make shared artifacts unreadable."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_file_mode()


class OutputLockedError(RuntimeError):
    """Another dlfp process is writing the same output."""


class DiskFullError(OSError):
    """The disk filled up while writing; earlier artifacts are left untouched."""


def _explain_os_error(error: OSError, path: Path) -> OSError:
    if error.errno == errno.ENOSPC:
        return DiskFullError(errno.ENOSPC, f"no space left on device while writing {path}; "
                             "earlier outputs are intact, free some space and rerun")
    return error


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it is renamed onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        _fsync_file(tmp)  # the content is on disk before the name points at it
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise _explain_os_error(error, path) from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make renames inside `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)


def write_text_atomic(path: Path | str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path | str, payload: object) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_TOKEN = re.compile(r"[A-Za-z0-9_.-]+")  # ids like "-face_01": no operator, call or DDE link possible


def csv_safe(cell: object) -> object:
    """A cell a spreadsheet cannot run as a formula: a string starting with = + - @ (or a tab or CR) gets a leading
    single quote, unless it is a number ("-0.5", "+1e-3") or a plain token of letters, digits, '_', '.' and '-'
    (ids and stems stay as they are, so stages reading them back find their files). Numbers (int, float) and
    other strings are written unchanged."""
    if not isinstance(cell, str) or not cell.startswith(_FORMULA_START) or _PLAIN_TOKEN.fullmatch(cell):
        return cell
    try:
        float(cell)
    except ValueError:
        return "'" + cell
    return cell


def write_csv_atomic(path: Path | str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Every CSV the project writes goes through here: cells are made formula-safe (csv_safe)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow([csv_safe(cell) for cell in header])
            writer.writerows([csv_safe(cell) for cell in row] for row in rows)


def open_lock_file(path: Path):
    """A lock file opened for writing without following a symlink and without truncating: a link planted at
    `path` cannot make the lock damage another file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, _FILE_MODE)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OutputLockedError(f"{path}: the lock file is a symbolic link; refusing to open it (remove it "
                                    "if it is not yours)") from None
        raise
    return os.fdopen(fd, "w")


@contextlib.contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """Refuse a second concurrent run on the same output instead of letting two writers corrupt it."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir.parent / f".{out_dir.name}.lock"
    handle = open_lock_file(lock_path)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputLockedError(
                f"{out_dir} is being written by another dlfp run (lock {lock_path}); wait for it to finish"
            ) from None
        yield
    finally:
        handle.close()


def _old_path(out_dir: Path) -> Path:
    return out_dir.with_name(out_dir.name + OLD_SUFFIX)


def recover_swap(out_dir: Path | str) -> None:
    """Finish or undo a swap that a kill interrupted (call under output_lock, before anything else).

    `<out>.dlfp-old` with no `<out>`: killed between moving the old output aside and renaming the new one in; the old
    output is put back (the stage did not finish: its new output is rebuilt by the rerun). `<out>.dlfp-old` beside
    `<out>`: killed after the new output was in place; the old one is deleted."""
    out_dir = Path(out_dir)
    old = _old_path(out_dir)
    if not old.exists():
        return
    if out_dir.exists():
        shutil.rmtree(old)
    else:
        os.rename(old, out_dir)
        _fsync_dir(out_dir.parent)


def swap_into_place(new_dir: Path, out_dir: Path) -> None:
    """Replace `out_dir` by `new_dir` so that a kill at any moment leaves one of them whole (see recover_swap):
    move the old output aside, rename the new one in, then delete the old one."""
    old = _old_path(out_dir)
    if out_dir.exists():
        os.rename(out_dir, old)
    os.rename(new_dir, out_dir)
    _fsync_dir(out_dir.parent)
    if old.exists():
        shutil.rmtree(old)


@contextlib.contextmanager
def staged_output(out_dir: Path | str) -> Iterator[Path]:
    """Build a stage's output folder as `<out>.partial`, then swap it into place on success.

    A killed or failed stage leaves only the `.partial` folder, which no later stage reads as finished; a kill
    during the swap leaves the old or the new output whole, and the next run recovers it (recover_swap).
    """
    out_dir = Path(out_dir)
    with output_lock(out_dir):
        recover_swap(out_dir)
        partial = out_dir.with_name(out_dir.name + PARTIAL_SUFFIX)
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        try:
            yield partial
        except OSError as error:
            shutil.rmtree(partial, ignore_errors=True)
            raise _explain_os_error(error, out_dir) from error
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        swap_into_place(partial, out_dir)
