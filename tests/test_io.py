"""Atomic writes, staged stage outputs and locks: a killed or failing stage never leaves finished-looking output."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dlfp.io import atomic
from dlfp.io.hashing import derive_seed


def test_atomic_write_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    atomic.write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text().strip().endswith("}") and '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_staged_output_keeps_the_old_output_when_a_run_fails(tmp_path: Path) -> None:
    out = tmp_path / "stage"
    with atomic.staged_output(out) as staging:
        (staging / "done.txt").write_text("first")
    with pytest.raises(ValueError):
        with atomic.staged_output(out) as staging:
            (staging / "done.txt").write_text("second, half written")
            raise ValueError("bad input")
    assert (out / "done.txt").read_text() == "first"
    assert not out.with_name("stage.partial").exists()


def test_disk_full_is_reported_clearly_and_old_output_survives(tmp_path: Path) -> None:
    out = tmp_path / "stage"
    with atomic.staged_output(out) as staging:
        (staging / "done.txt").write_text("first")
    with pytest.raises(atomic.DiskFullError, match="no space left on device"):
        with atomic.staged_output(out):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (out / "done.txt").read_text() == "first"


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from dlfp.io.atomic import staged_output
    with staged_output(Path(sys.argv[1])) as staging:
        (staging / "part.txt").write_text("x")
        print("ready", flush=True)
        time.sleep(60)
    """
)


def _start_holder(out: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def test_concurrent_runs_are_refused_and_kill_9_leaves_nothing_finished(tmp_path: Path) -> None:
    out = tmp_path / "stage"
    holder = _start_holder(out)
    try:
        with pytest.raises(atomic.OutputLockedError, match="being written by another dlfp run"):
            with atomic.staged_output(out):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert not out.exists()  # only the .partial folder is left, never the finished name
    assert out.with_name("stage.partial").exists()
    deadline = time.monotonic() + 10
    while True:  # the kernel drops the dead holder's lock
        try:
            with atomic.staged_output(out) as staging:
                (staging / "done.txt").write_text("ok")
            break
        except atomic.OutputLockedError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert (out / "done.txt").read_text() == "ok"
    assert not out.with_name("stage.partial").exists()


def test_derived_seeds_are_stable_across_processes() -> None:
    here = derive_seed(1234, "00042", "moderate")
    code = "from dlfp.io.hashing import derive_seed; print(derive_seed(1234, '00042', 'moderate'))"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "123"})
    assert int(there.stdout) == here
    assert 0 <= here < 2**63
    assert derive_seed(1234, "00042", "mild") != here


def test_atomic_files_get_ordinary_permissions(tmp_path: Path) -> None:
    target = tmp_path / "page.html"
    atomic.write_text_atomic(target, "<p>x</p>")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
