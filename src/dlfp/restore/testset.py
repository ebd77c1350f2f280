"""SHIM (issue 15 wave 2 removes it): old import path of dlfp.stages.restore."""

from __future__ import annotations

from dlfp.stages import restore as _stage


def run(*args, **kwargs) -> dict:
    """dlfp.stages.restore.run, looked up at call time (so a test that patches the real module patches cli.py)."""
    return _stage.run(*args, **kwargs)
