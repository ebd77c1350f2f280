"""SHIM (issue 15 wave 2 removes it): old import path of dlfp.shards.format, dlfp.shards.local and
dlfp.stages.shard (`run`, imported lazily so that library importers of this shim never import stages/)."""

from dlfp.shards.format import (  # noqa: F401
    SPLITS,
    TEST_SPLIT,
    TRAIN_SPLIT,
    VAL_SPLIT,
    ShardCorruptError,
    ShardSetWriter,
    SplitLeakError,
    assign_split,
    ffhq_split,
    hash_split,
    json_bytes,
    pair_presets,
    require_split,
    resolve_split_rule,
    split_records,
)
from dlfp.shards.local import iter_samples, read_index, verify_shards  # noqa: F401


def __getattr__(name: str) -> object:
    if name == "run":
        from dlfp.stages.shard import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
