"""SHIM (issue 15 wave 2 removes it): old import path of dlfp.restorers."""

from dlfp.restorers import training_losses

__all__ = ["training_losses"]
