"""The evaluate stage's per-image scoring: which (restorer, preset) sets to score, and every metric per image.

The sources are the restore stage's tars, plus the pairs' own LQ as restorer "lq" when the restore stage
did not write it; each is streamed beside its GT in id order and scored in batches of equal image size. Rows
keep the restored descriptor ("embedding") for the set-level figures (summary.py). Imports dlfp.metrics, the
shards reader and dlfp.io; nothing imports it but the stage.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dlfp.io.images import decode_png_bytes, encode_png
from dlfp.layout import LQ_RESTORER, STATUS_OK
from dlfp.metrics.identity import IdentityScorer, identity_label, identity_scores
from dlfp.metrics.iqa import PAIR_METRICS, MetricInfo, no_reference_scores, pair_scores, to_unit_tensor
from dlfp.metrics.landmarks import LandmarkScorer
from dlfp.shards.format import TEST_SPLIT, pair_presets
from dlfp.shards.local import iter_samples

DECIMALS = 6
COLUMNS = ("preset", "restorer", "id", "psnr", "ssim", "lpips", "niqe", "identity_distance", "identity_angle_deg",
           "identity_match", "rank1_correct", "landmarks_detected", "landmark_nme", "landmark_error_px")
UNTRAINED = ("bicubic", LQ_RESTORER)  # restorers without learned weights


@dataclass
class Source:
    """Where a (restorer, preset)'s images come from: restore-stage tars, or the pairs' own LQ."""

    restorer: str
    preset: str
    folder: Path
    records: list[dict]
    image_key: str  # "restored.png" or "lq.png"


@dataclass
class Scorers:
    pyiqa: dict[str, MetricInfo]
    identity: IdentityScorer
    landmarks: LandmarkScorer
    device: torch.device
    gt_embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # sample id -> identity (identity_label)


def restored_split(restored_index: Mapping) -> str:
    """The pairs split a restore-stage folder was made from; folders from before restore recorded it hold test."""
    return restored_index.get("split") or TEST_SPLIT


def list_sources(pairs_dir: Path, pairs_index: Mapping, restored_dir: Path, restored_index: Mapping, split: str
                 ) -> tuple[list[Source], dict[str, str]]:
    """Every (restorer, preset) to evaluate on the `split` pairs, and {restorer: reason} for those the restore stage
    did not run. A restored folder made from the other split is refused: its ids are not this split's."""
    made_from = restored_split(restored_index)
    if made_from != split:
        raise ValueError(f"{restored_dir}: restored from the {made_from!r} pairs, but evaluate reads the {split!r} "
                         f"pairs; restore the same split (dlfp restore --split {split}) or evaluate with "
                         f"--split {made_from}")
    split_presets = pair_presets(pairs_index, split)
    presets = list(split_presets)
    sources: list[Source] = []
    not_run: dict[str, str] = {}
    entries = restored_index.get("restorers", {})
    if LQ_RESTORER not in entries or entries[LQ_RESTORER].get("status") != STATUS_OK:
        sources += [Source(LQ_RESTORER, preset, pairs_dir, split_presets[preset]["shards"], "lq.png")
                    for preset in presets]
    for name, entry in entries.items():
        if entry.get("status") != STATUS_OK:
            not_run[name] = f"{entry.get('status', 'not run')}: {entry.get('reason', 'no reason recorded')}"
            continue
        for preset in presets:
            if preset not in entry["presets"]:
                raise ValueError(f"{restored_dir}: restorer {name} has no output for preset {preset}; rerun "
                                 "`dlfp restore` on the current pairs")
            sources.append(Source(name, preset, restored_dir, entry["presets"][preset]["shards"], "restored.png"))
    order = {name: position for position, name in enumerate([LQ_RESTORER, *entries])}
    sources.sort(key=lambda s: (presets.index(s.preset), order[s.restorer]))
    return sources, not_run


def _paired(source: Source, pairs_dir: Path, pair_records: list[dict]) -> Iterator[tuple[str, dict, bytes, bytes]]:
    """(id, GT meta, GT png, restored png) in id order; the two streams must hold the same ids."""
    pairs = iter_samples(pairs_dir, pair_records)
    if source.image_key == "lq.png":
        for sample in pairs:
            yield sample["__key__"], json.loads(sample["json"]), sample["gt.png"], sample["lq.png"]
        return
    restored = iter_samples(source.folder, source.records)
    for pair, image in zip(pairs, restored, strict=True):
        if pair["__key__"] != image["__key__"]:
            raise ValueError(f"{source.restorer}/{source.preset}: restored sample {image['__key__']!r} where the "
                             f"pairs have {pair['__key__']!r}; rerun `dlfp restore` on the current pairs")
        yield pair["__key__"], json.loads(pair["json"]), pair["gt.png"], image[source.image_key]


def round_figure(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), DECIMALS)


def _score_batch(scorers: Scorers, batch: list[tuple[str, dict, np.ndarray, np.ndarray]]) -> list[dict]:
    """Per-image metrics of one batch of (id, meta, gt, restored) with equal image sizes."""
    keys = [item[0] for item in batch]
    gts = [item[2] for item in batch]
    restored = [item[3] for item in batch]
    rows = [{"id": key} for key in keys]
    restored_t = to_unit_tensor(restored, scorers.device)
    gt_t = to_unit_tensor(gts, scorers.device)
    for name in PAIR_METRICS:
        info = scorers.pyiqa[name]
        values = pair_scores(info.compute, restored_t, gt_t) if info.available else [None] * len(batch)
        for row, value in zip(rows, values, strict=True):
            row[name] = round_figure(value)
    niqe = scorers.pyiqa["niqe"]
    values = no_reference_scores(niqe.compute, restored_t) if niqe.available else [None] * len(batch)
    for row, value in zip(rows, values, strict=True):
        row["niqe"] = round_figure(value)

    for key, meta, *_ in batch:
        scorers.labels[key] = identity_label(key, meta)
    missing = [position for position, key in enumerate(keys) if key not in scorers.gt_embeddings]
    if missing:
        for position, vector in zip(missing, scorers.identity.embed([gts[p] for p in missing]), strict=True):
            scorers.gt_embeddings[keys[position]] = vector
    embeddings = scorers.identity.embed(restored)
    gt_embeddings = np.stack([scorers.gt_embeddings[key] for key in keys])
    identity = identity_scores(embeddings, gt_embeddings)
    for position, row in enumerate(rows):
        row["embedding"] = embeddings[position]
        row["identity_distance"] = round_figure(identity["identity_distance"][position])
        row["identity_angle_deg"] = round_figure(identity["identity_angle_deg"][position])
        row["identity_match"] = bool(identity["identity_match"][position])
        landmarks = batch[position][1].get("landmarks")
        if landmarks is None:  # no stored GT landmarks: not computed (not a detection failure)
            row.update(landmarks_detected=None, landmark_nme=None, landmark_error_px=None)
            continue
        result = scorers.landmarks.measure(restored[position], np.asarray(landmarks, np.float64))
        row.update(landmarks_detected=result.detected, landmark_nme=round_figure(result.nme),
                   landmark_error_px=round_figure(result.error_px))
    return rows


def score_source(scorers: Scorers, source: Source, pairs_dir: Path, pair_records: list[dict], batch_size: int,
                 fid_dirs: tuple[Path, Path] | None, progress: tqdm) -> list[dict]:
    """Every per-image row of one source; its decoded images also go to the FID folders when FID runs."""
    rows: list[dict] = []
    stream = _paired(source, pairs_dir, pair_records)
    while chunk := list(islice(stream, batch_size)):
        decoded = [(key, meta, decode_png_bytes(gt_png, source=key), decode_png_bytes(image_png, source=key))
                   for key, meta, gt_png, image_png in chunk]
        by_shape: dict[tuple, list] = {}
        for item in decoded:
            if item[2].shape != item[3].shape:
                raise ValueError(f"{source.restorer}/{source.preset}/{item[0]}: restored {item[3].shape} "
                                 f"vs GT {item[2].shape}")
            by_shape.setdefault(item[2].shape, []).append(item)
        scored = {row["id"]: row for group in by_shape.values() for row in _score_batch(scorers, group)}
        rows += [scored[key] for key, *_ in chunk]
        if fid_dirs is not None:
            restored_dir, gt_dir = fid_dirs
            for key, _, gt, image in decoded:
                (restored_dir / f"{key}.png").write_bytes(encode_png(image))
                gt_path = gt_dir / f"{key}.png"
                if not gt_path.exists():
                    gt_path.write_bytes(encode_png(gt))
        progress.update(len(chunk))
    return rows
