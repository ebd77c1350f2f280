"""SHIM (issue 15 wave 2 removes it): old import path of dlfp.stages.align (`run`, for cli.py)."""

from dlfp.stages.align import run  # noqa: F401
