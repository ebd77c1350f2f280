"""SHIM (issue 15 wave 2 removes it): old import path of dlfp.stages.acquire (`run`), its ffhq source and
dlfp.ffhq."""

from dlfp.ffhq import ffhq_id_from_name  # noqa: F401
from dlfp.stages.acquire import run  # noqa: F401
from dlfp.stages.acquire.ffhq import _ffhq_file  # noqa: F401
