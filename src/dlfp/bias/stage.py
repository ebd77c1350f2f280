"""SHIM (issue 15 wave 2 removes it): old import path of dlfp.stages.bias."""

from dlfp.stages.bias import run

__all__ = ["run"]
