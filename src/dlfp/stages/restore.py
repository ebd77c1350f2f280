"""Stage `restore`: run every restorer on every preset's fixed pairs of one split (test by default).

The pipeline restores the test pairs, once, for the reported figures; `split="val"` restores the val pairs for
tuning. Every sample's recorded split is checked (a miswired index stops the run), and index.json and the receipt
record the split, so that evaluate can refuse a folder made from the other split.

Output: <out>/<restorer>/<preset>/restored-NNNNNN.tar (WebDataset, key = sample id: `restored.png` and `json`
{id, preset, restorer}), <out>/index.json, <out>/timings.csv and receipt.json.

Per-sample seconds are kept out of the tars and the index (in timings.csv, batch time / batch size), so the
tars and index.json are byte-identical between runs for the baselines (and for gfpgan on the same machine and
torch build). A restorer that cannot run (gfpgan without its weights file) is recorded as
{"restorer", "status": "not run", "reason"} in the index and the receipt; the others still run.

params.restore.backend (torch | openvino | auto, dlfp.inference) runs the gfpgan network; the index (restorer
description) and the receipt record the backend that really ran and its version. The default `torch` keeps the
tars byte-identical; OpenVINO's output differs by ~1e-6 before the 8-bit rounding.

A stage: it reads the pairs, calls the restorer library (dlfp.restorers) and writes its outputs; nothing imports it
but cli.py.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

from tqdm import tqdm

from dlfp.io.atomic import staged_output, write_csv_atomic, write_json_atomic
from dlfp.io.images import decode_png_bytes, encode_png
from dlfp.io.receipt import write_receipt
from dlfp.layout import INDEX_NAME, STATUS_NOT_RUN, STATUS_OK, TIMINGS_NAME
from dlfp.params import Params
from dlfp.restorers import Restorer, RestorerUnavailable, build_restorer, timed
from dlfp.shards import streamed as streams
from dlfp.shards.format import (
    TEST_SPLIT,
    ShardSetWriter,
    check_pair_split,
    json_bytes,
    pair_presets,
    require_split,
)
from dlfp.shards.local import iter_samples, read_index

log = logging.getLogger(__name__)

RESTORED_PATTERN = "{restorer}/{preset}/restored-{{:06d}}.tar"
TIMING_DECIMALS = 6


def _batches(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def restore_preset(restorer: Restorer, pairs_dir: Path, shard_records: list[dict], writer: ShardSetWriter,
                   preset: str, split: str, progress: tqdm | None = None) -> list[tuple[str, float]]:
    """Restore one preset's `split` pairs into `writer`; returns (id, seconds per image) in id order."""
    timings: list[tuple[str, float]] = []
    for batch in _batches(iter_samples(pairs_dir, shard_records), restorer.batch_size):
        keys = [sample["__key__"] for sample in batch]
        metas = [json.loads(sample["json"]) for sample in batch]
        for meta in metas:
            require_split(meta, split, f"{pairs_dir}: {split} pairs of preset {preset}")
        images = [decode_png_bytes(sample["lq.png"], source=key) for sample, key in zip(batch, keys, strict=True)]
        restored, seconds = timed(restorer, images, metas)
        for key, image, lq in zip(keys, restored, images, strict=True):
            if image.shape != lq.shape or image.dtype != lq.dtype:
                raise RuntimeError(f"{restorer.name} returned {image.shape} {image.dtype} for {key} "
                                   f"({lq.shape} {lq.dtype} expected)")
            record = {"id": key, "preset": preset, "restorer": restorer.name}
            writer.write({"__key__": key, "restored.png": encode_png(image), "json": json_bytes(record)})
            timings.append((key, seconds))
        if progress is not None:
            progress.update(len(batch))
    return timings


def _build(name: str, params: Params) -> Restorer:
    options = params.restore
    return build_restorer(name, weights=options.weights, arch=options.arch.model_dump(),
                          batch_size=options.batch_size, device=options.device, backend=options.backend,
                          threads=options.threads)


def run(params: Params, pairs_dir: Path, out_dir: Path, split: str = TEST_SPLIT) -> dict:
    """Restore the `split` pairs (test: the reported figures; val: tuning) of every preset with every restorer."""
    import torch

    check_pair_split(split)
    started = time.monotonic()
    pairs_dir, out_dir = Path(pairs_dir), Path(out_dir)
    pairs_index = read_index(pairs_dir)
    presets = pair_presets(pairs_index, split)
    torch.set_num_threads(params.restore.threads)

    restorers: dict[str, Restorer] = {}
    entries: dict[str, dict] = {}
    for name in params.restore.restorers:
        try:
            restorers[name] = _build(name, params)
        except RestorerUnavailable as error:
            log.warning("restore: %s not run: %s", name, error)
            entries[name] = {"restorer": name, "status": STATUS_NOT_RUN, "reason": str(error)}

    total = sum(int(entry["count"]) for entry in presets.values()) * len(restorers)
    timing_rows: list[list[object]] = []
    counts: dict[str, dict[str, int]] = {}
    with staged_output(out_dir) as staging:
        with tqdm(total=total, desc="restore", unit="img") as progress:
            for name, restorer in restorers.items():
                per_preset: dict[str, dict] = {}
                for preset, entry in presets.items():
                    progress.set_postfix_str(f"{name}/{preset}")
                    writer = ShardSetWriter(staging, RESTORED_PATTERN.format(restorer=name, preset=preset),
                                            params.shard.samples_per_shard)
                    timings = restore_preset(restorer, pairs_dir, entry["shards"], writer, preset, split, progress)
                    shards = [record.__dict__ for record in writer.close()]
                    per_preset[preset] = {"count": sum(shard["count"] for shard in shards), "shards": shards}
                    timing_rows += [[name, preset, key, round(seconds, TIMING_DECIMALS)] for key, seconds in timings]
                entries[name] = {"restorer": name, "status": STATUS_OK, "description": restorer.description,
                                 "presets": per_preset}
                counts[name] = {preset: value["count"] for preset, value in per_preset.items()}
        ordered = {name: entries[name] for name in params.restore.restorers}
        index = {"split": split, "presets": sorted(presets), "restorers": ordered}
        write_json_atomic(staging / INDEX_NAME, index)
        write_csv_atomic(staging / TIMINGS_NAME, ["restorer", "preset", "id", "seconds"], timing_rows)
        not_run = {name: entry["reason"] for name, entry in ordered.items() if entry["status"] == STATUS_NOT_RUN}
        # The inference backend that really ran each network restorer (params.restore.backend may fall back).
        backends = {name: {key: restorer.description[key] for key in ("backend", "backend_version")}
                    for name, restorer in restorers.items() if "backend" in restorer.description}
        write_receipt(staging, stage="restore", params_hash=params.section_hash("shard", "restore"), seed=None,
                      counts=counts, inputs={"pairs": str(pairs_dir),
                                             "pairs_index_sha256": streams.index_digest(pairs_dir)},
                      packages=("torch", "opencv-python-headless", "numpy", "webdataset"),
                      extra={"split": split, "restorers": {name: entry["status"] for name, entry in ordered.items()},
                             "not_run": not_run, "backends": backends})

    elapsed = time.monotonic() - started
    done = sum(sum(per.values()) for per in counts.values())
    skipped = f"; not run: {', '.join(not_run)}" if not_run else ""
    print(f"restore: {done} {split} images ({', '.join(restorers) or 'no restorer'} x {len(presets)} presets){skipped} "
          f"in {elapsed:.1f} s -> {out_dir}")
    return {"split": split, "counts": counts, "not_run": not_run, "seconds": round(elapsed, 1), "out": str(out_dir)}
