"""SHIM (issue 15 wave 2 removes it): old import path of dlfp.degradation and of dlfp.stages.degrade (`run`,
imported lazily so that library importers of this shim never import stages/)."""

from dlfp.degradation import degrade, sample_seed, size_scale  # noqa: F401


def __getattr__(name: str) -> object:
    if name == "run":
        from dlfp.stages.degrade import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
