"""SHIM (issue 15 wave 2 removes it): old import path of dlfp.stages.report (run) and dlfp.report (make_env)."""

from dlfp.report import make_env
from dlfp.stages.report import run

__all__ = ["make_env", "run"]
