"""SHIM (issue 15 wave 2 removes it): old import path of dlfp.shards.streamed (and the path checks of
dlfp.shards.format)."""

from dlfp.shards.format import UnsafeShardPathError  # noqa: F401
from dlfp.shards.streamed import (  # noqa: F401
    StreamedShardError,
    StreamedShards,
    index_digest,
    is_streamed,
    iter_streamed_samples,
    normalise_location,
    resolve,
)
