"""SHIM (issue 15 wave 2 removes it): old import path of dlfp.metrics.identity, dlfp.metrics.landmarks and
dlfp.metrics.frechet."""

from dlfp.metrics.frechet import frechet_distance
from dlfp.metrics.identity import IdentityScorer, wilson_interval
from dlfp.metrics.landmarks import DETECT_UPSAMPLE

__all__ = ["DETECT_UPSAMPLE", "IdentityScorer", "frechet_distance", "wilson_interval"]
