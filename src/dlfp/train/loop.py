"""SHIM (issue 15 wave 2 removes it): old import path of dlfp.train.engine (checkpoint, distributed, loop)."""

from dlfp.train.engine.checkpoint import checkpoint_path, load_checkpoint, run_folder, save_checkpoint
from dlfp.train.engine.distributed import DistInfo

__all__ = ["DistInfo", "checkpoint_path", "load_checkpoint", "run_folder", "save_checkpoint"]
