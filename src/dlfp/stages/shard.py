"""Stage `shard`: split the aligned faces and write byte-reproducible WebDataset tars with an index.

Layout: <out>/<split>/clean-NNNNNN.tar and <out>/index.json (per shard: path, sample count, sha256).
Each sample holds `gt.png` (the aligned PNG, byte for byte) and `json` (id, source, landmarks, boxes, licence,
split). The split rules, the writer and the index format (shared with the degrade stage's pair tars) live in
dlfp.shards.format.

Imports dlfp.shards, dlfp.io and dlfp.params.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm

from dlfp.io.atomic import staged_output, write_json_atomic
from dlfp.io.receipt import write_receipt
from dlfp.layout import INDEX_NAME, META_NAME
from dlfp.params import Params
from dlfp.shards.format import SPLITS, ShardSetWriter, assign_split, json_bytes, resolve_split_rule


def _load_aligned(in_dir: Path) -> list[dict]:
    meta_path = in_dir / META_NAME
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: aligned metadata missing; run `dlfp align` first")
    rows = [json.loads(line) for line in meta_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(rows, key=lambda row: row["id"])


def run(params: Params, in_dir: Path, out_dir: Path) -> dict:
    """Assign every aligned face to train/val/test and write the clean shards and their index."""
    started = time.monotonic()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    rows = _load_aligned(in_dir)
    rule = resolve_split_rule(params.shard.split, params.data.source)
    fractions = params.shard.fractions.model_dump()
    by_split: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for row in rows:
        by_split[assign_split(row, rule, fractions, params.shard.ffhq_val_ids)].append(row)

    with staged_output(out_dir) as staging:
        index: dict = {"split_rule": rule, "fractions": fractions if rule == "hash" else None,
                       "ffhq_val_ids": list(params.shard.ffhq_val_ids) if rule == "ffhq" else None,
                       "splits": {}}
        progress = tqdm(total=len(rows), desc="shard", unit="img")
        for split in SPLITS:
            writer = ShardSetWriter(staging, f"{split}/clean-{{:06d}}.tar", params.shard.samples_per_shard)
            for row in by_split[split]:
                image_path = in_dir / "images" / f"{row['id']}.png"
                meta = {**row, "split": split}
                writer.write({"__key__": row["id"], "gt.png": image_path.read_bytes(), "json": json_bytes(meta)})
                progress.update()
            records = writer.close()
            index["splits"][split] = {"count": len(by_split[split]),
                                      "shards": [record.__dict__ for record in records]}
        progress.close()
        write_json_atomic(staging / INDEX_NAME, index)
        counts = {split: len(by_split[split]) for split in SPLITS}
        write_receipt(staging, stage="shard", params_hash=params.section_hash("data", "shard"), seed=None,
                      counts=counts, inputs={"aligned": str(in_dir)}, packages=("webdataset",))

    elapsed = time.monotonic() - started
    summary = {"counts": counts, "split_rule": rule, "seconds": round(elapsed, 1), "out": str(out_dir)}
    print(f"shard: {counts['train']} train, {counts['val']} val, {counts['test']} test ({rule} split) "
          f"in {elapsed:.1f} s -> {out_dir}")
    return summary
