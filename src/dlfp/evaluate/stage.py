"""SHIM (issue 15 wave 2 removes it): old import path of dlfp.stages.evaluate."""

from dlfp.stages.evaluate import run
from dlfp.stages.evaluate.scoring import COLUMNS

__all__ = ["COLUMNS", "run"]
