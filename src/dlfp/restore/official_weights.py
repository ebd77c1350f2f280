"""SHIM (issue 15 wave 2 removes it): old import path of dlfp.photos.official_weights (cli.py's comment names it)."""

from dlfp.photos.official_weights import OFFICIAL_NAMES

__all__ = ["OFFICIAL_NAMES"]
