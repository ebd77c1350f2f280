"""Stage `degrade`: write fixed degraded val and test pairs for every preset, from the clean shards.

The degradation itself is dlfp.degradation (`degrade`, shared with training); this module reads the shards,
runs it in a process pool, and writes the pair tars, their index and the receipt. Output bytes do not depend on
degrade.workers.

Imports dlfp.degradation, dlfp.shards, dlfp.io and dlfp.params.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from multiprocessing import get_context
from pathlib import Path

import cv2
from tqdm import tqdm

from dlfp.degradation import degrade, sample_seed, size_scaling
from dlfp.io.atomic import staged_output, write_json_atomic
from dlfp.io.images import decode_png_bytes, encode_png
from dlfp.io.receipt import write_receipt
from dlfp.layout import INDEX_NAME
from dlfp.params import DegradationParams, Params
from dlfp.shards import streamed as streams
from dlfp.shards.format import PAIR_SPLITS, ShardSetWriter, json_bytes, pair_presets, split_records
from dlfp.shards.local import iter_samples, read_index

# Fixed pairs are written for the PAIR_SPLITS: val for tuning and training's validation, test for the reported
# figures. The train split is degraded on the fly by the training data loader (same `degrade` function).
PAIRS_PATTERN = "{split}/{preset}/pairs-{{:06d}}.tar"
CHUNK_SIZE = 4
WINDOW_PER_WORKER = 32  # samples in flight per worker: bounds memory (Pool.imap reads its input eagerly)


def _init_worker() -> None:
    """One OpenCV thread per worker process: the pool is the parallelism, threads would only compete."""
    cv2.setNumThreads(1)


Task = tuple[str, bytes, bytes, dict[str, DegradationParams], int]  # key, gt.png, json, presets, global seed


def _degrade_sample(task: Task) -> list[tuple[bytes, bytes]]:
    """Worker: decode the GT once, then one (lq.png, json) per preset, in the presets' order."""
    key, gt_png, meta_bytes, presets, global_seed = task
    gt = decode_png_bytes(gt_png, source=key)
    meta = json.loads(meta_bytes)
    out = []
    for name, preset in presets.items():
        seed = sample_seed(global_seed, key, name)
        lq, applied = degrade(gt, preset, seed)
        record = {**meta, "preset": name, "sample_seed": seed, "degradation": applied}
        out.append((encode_png(lq), json_bytes(record)))
    return out


def _windows(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while window := list(islice(iterator, size)):
        yield window


def _sorted_tasks(samples: Iterable[Mapping], presets: dict[str, DegradationParams],
                  global_seed: int) -> Iterator[Task]:
    """Pass samples through in id order (the shard stage sorts them); out-of-order input is an error."""
    previous = None
    for sample in samples:
        key = sample["__key__"]
        if previous is not None and key <= previous:
            raise ValueError(f"shards are not in ascending id order ({previous!r} then {key!r}); "
                             "rerun `dlfp shard`")
        previous = key
        yield key, sample["gt.png"], sample["json"], presets, global_seed


@contextlib.contextmanager
def _mapper(workers: int) -> Iterator:
    """Ordered map: in-process for one worker, else a pool of processes forked from a fork server.

    Not plain fork: the parent may hold OpenCV/tqdm threads, and forking a threaded process can hang. Not
    spawn: every worker would re-import albumentations (which imports torch, seconds each). The fork server
    imports this module once and forks clean, single-threaded workers from it.
    """
    if workers <= 1:
        previous = cv2.getNumThreads()
        _init_worker()
        try:
            yield lambda tasks: map(_degrade_sample, tasks)
        finally:
            cv2.setNumThreads(previous)
        return
    context = get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with context.Pool(workers, initializer=_init_worker) as pool:
        yield lambda tasks: pool.imap(_degrade_sample, tasks, chunksize=CHUNK_SIZE)


def _write_pairs(tasks: Iterable[Task], writers: dict[str, ShardSetWriter], workers: int,
                 progress: tqdm) -> None:
    with _mapper(workers) as mapper:
        for window in _windows(tasks, workers * WINDOW_PER_WORKER):
            for task, results in zip(window, mapper(window), strict=True):
                key, gt_png = task[0], task[1]
                for writer, (lq_png, record) in zip(writers.values(), results, strict=True):
                    writer.write({"__key__": key, "lq.png": lq_png, "gt.png": gt_png, "json": record})
                progress.update()


def run(params: Params, shards_dir: Path, out_dir: Path) -> dict:
    """Write fixed degraded val and test pairs for every preset, byte-identical whatever degrade.workers is.

    index.json: {"splits": {"val": {"presets": {name: {count, shards, params}}}, "test": {...}}}; read it with
    dlfp.shards.format.pair_presets(index, split), which names the split explicitly.
    """
    started = time.monotonic()
    shards_dir, out_dir = Path(shards_dir), Path(out_dir)
    index = read_index(shards_dir)
    presets = dict(params.degrade.presets)
    split_records_by_name = {split: split_records(index, split) for split in PAIR_SPLITS}
    total = sum(int(record["count"]) for records in split_records_by_name.values() for record in records)

    with staged_output(out_dir) as staging:
        out_index: dict = {"splits": {}}
        with tqdm(total=total, desc="degrade", unit="img") as progress:
            for split, records in split_records_by_name.items():
                writers = {name: ShardSetWriter(staging, PAIRS_PATTERN.format(split=split, preset=name),
                                                params.shard.samples_per_shard) for name in presets}
                tasks = _sorted_tasks(iter_samples(shards_dir, records), presets, params.seed)
                _write_pairs(tasks, writers, params.degrade.workers, progress)
                entries = {}
                for name, writer in writers.items():
                    shards = [record.__dict__ for record in writer.close()]
                    entries[name] = {"count": sum(shard["count"] for shard in shards), "shards": shards,
                                     "params": presets[name].model_dump(mode="json"),
                                     "size_scaling": size_scaling(presets[name], params.data.size)}
                out_index["splits"][split] = {"presets": entries}
        write_json_atomic(staging / INDEX_NAME, out_index)
        counts = {split: {name: entry["count"] for name, entry in pair_presets(out_index, split).items()}
                  for split in PAIR_SPLITS}
        _write_stage_receipt(staging, params, counts, shards_dir)

    elapsed = time.monotonic() - started
    pairs = sum(sum(per_preset.values()) for per_preset in counts.values())
    rate = pairs / elapsed if elapsed > 0 else 0.0
    per_split = "; ".join(f"{split}: " + ", ".join(f"{name} {count}" for name, count in per_preset.items())
                          for split, per_preset in counts.items())
    print(f"degrade: {per_split} pairs ({pairs} total) in {elapsed:.1f} s, {rate:.1f} pairs/s "
          f"with {params.degrade.workers} workers -> {out_dir}")
    return {"counts": counts, "seconds": round(elapsed, 1), "pairs_per_s": round(rate, 2),
            "out": str(out_dir)}


def _write_stage_receipt(staging: Path, params: Params, counts: dict[str, dict[str, int]], shards_dir: Path) -> None:
    """The input is named by its index hash too: the same path can hold different shards."""
    write_receipt(staging, stage="degrade", params_hash=params.section_hash("seed", "shard", "degrade"),
                  seed=params.seed, counts=counts,
                  inputs={"shards": str(shards_dir),
                          "shards_index_sha256": streams.index_digest(shards_dir)},
                  packages=("albumentations", "opencv-python-headless", "numpy", "webdataset"))
