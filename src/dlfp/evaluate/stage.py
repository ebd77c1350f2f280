"""Stage `evaluate`: score every restored test face against its GT, per preset and restorer.

Inputs: the pairs (GT, LQ, GT landmarks) and the restore stage's output. The LQ input itself is evaluated as
restorer "identity" when the restore stage did not write it. Metrics and their settings: see metrics.py.

Outputs: <out>/per_image.csv (one row per image x preset x restorer, every metric column, empty where not
computed), <out>/summary.json (aggregates, metric settings, the calibration with its impostor histogram, the
reason for every metric or restorer that was not computed), receipt.json, and `metrics_path`
(reports/metrics.json, for `dvc metrics show`): {preset: {restorer: {metric: number or "not computed: ..."}},
"accuracy": {...}, "calibration": {preset: {...}}, "colour_space": {"psnr": "RGB", "ssim": "Y of YIQ"}}.

The headline "accuracy" is rank-1 identification of one restorer on one preset (params.evaluate.headline_*),
with its Wilson 95% interval, next to the project's target: the fraction of restored faces whose nearest GT
descriptor (dlib, 128-D) among all of the preset's test GT faces is their own person's (copies of one FFHQ id
are one person). dlib's 0.6 threshold comes from its own chip alignment on LFW; here its false-accept rate is
measured on the test GT faces in our face frame (impostor pairs = GT pairs of different people), together with
the threshold at a false-accept rate of metrics.FAR_TARGET, and the verification match rates (restored vs own
GT closer than the threshold) at both thresholds are secondary figures. When a restorer's identity or
perceptual loss was trained with the dlib network that scores identity here (the restore index records it from
losses_active.json), its entry and the headline say so.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dlfp.data import streams
from dlfp.data.shards import TEST_SPLIT, iter_samples, pair_presets, read_index
from dlfp.evaluate import metrics as m
from dlfp.io.atomic import staged_output, write_csv_atomic, write_json_atomic
from dlfp.io.images import decode_png_bytes, encode_png
from dlfp.io.receipt import write_receipt
from dlfp.models.identity import MATCH_THRESHOLD
from dlfp.params import Params

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
PER_IMAGE_NAME = "per_image.csv"
SUMMARY_NAME = "summary.json"
LQ_RESTORER = "identity"  # the LQ input, evaluated as a restorer
STATUS_OK = "ok"
DECIMALS = 6
COLUMNS = ("preset", "restorer", "id", "psnr", "ssim", "lpips", "niqe", "identity_distance", "identity_angle_deg",
           "identity_match", "rank1_correct", "landmarks_detected", "landmark_nme", "landmark_error_px")
ACCURACY_DEFINITION = ("rank-1 identification: fraction of restored test faces whose nearest GT face descriptor "
                       "(dlib, 128-D, euclidean) among all test GT faces of the preset belongs to the same person "
                       "(copies of one FFHQ id count as one person); 95% Wilson interval")
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
    pyiqa: dict[str, m.MetricInfo]
    identity: m.IdentityScorer
    landmarks: m.LandmarkScorer
    device: torch.device
    gt_embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # sample id -> identity (m.identity_label)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _sources(pairs_dir: Path, pairs_index: Mapping, restored_dir: Path, restored_index: Mapping
             ) -> tuple[list[Source], dict[str, str]]:
    """Every (restorer, preset) to evaluate, and {restorer: reason} for those the restore stage did not run."""
    test_presets = pair_presets(pairs_index, TEST_SPLIT)
    presets = list(test_presets)
    sources: list[Source] = []
    not_run: dict[str, str] = {}
    entries = restored_index.get("restorers", {})
    if LQ_RESTORER not in entries or entries[LQ_RESTORER].get("status") != STATUS_OK:
        sources += [Source(LQ_RESTORER, preset, pairs_dir, test_presets[preset]["shards"], "lq.png")
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


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), DECIMALS)


def _score_batch(scorers: Scorers, batch: list[tuple[str, dict, np.ndarray, np.ndarray]]) -> list[dict]:
    """Per-image metrics of one batch of (id, meta, gt, restored) with equal image sizes."""
    keys = [item[0] for item in batch]
    gts = [item[2] for item in batch]
    restored = [item[3] for item in batch]
    rows = [{"id": key} for key in keys]
    restored_t = m.to_unit_tensor(restored, scorers.device)
    gt_t = m.to_unit_tensor(gts, scorers.device)
    for name in m.PAIR_METRICS:
        info = scorers.pyiqa[name]
        values = m.pair_scores(info.compute, restored_t, gt_t) if info.available else [None] * len(batch)
        for row, value in zip(rows, values, strict=True):
            row[name] = _round(value)
    niqe = scorers.pyiqa["niqe"]
    values = m.no_reference_scores(niqe.compute, restored_t) if niqe.available else [None] * len(batch)
    for row, value in zip(rows, values, strict=True):
        row["niqe"] = _round(value)

    for key, meta, *_ in batch:
        scorers.labels[key] = m.identity_label(key, meta)
    missing = [position for position, key in enumerate(keys) if key not in scorers.gt_embeddings]
    if missing:
        for position, vector in zip(missing, scorers.identity.embed([gts[p] for p in missing]), strict=True):
            scorers.gt_embeddings[keys[position]] = vector
    embeddings = scorers.identity.embed(restored)
    gt_embeddings = np.stack([scorers.gt_embeddings[key] for key in keys])
    identity = m.identity_scores(embeddings, gt_embeddings)
    for position, row in enumerate(rows):
        row["embedding"] = embeddings[position]
        row["identity_distance"] = _round(identity["identity_distance"][position])
        row["identity_angle_deg"] = _round(identity["identity_angle_deg"][position])
        row["identity_match"] = bool(identity["identity_match"][position])
        landmarks = batch[position][1].get("landmarks")
        if landmarks is None:  # no stored GT landmarks: not computed (not a detection failure)
            row.update(landmarks_detected=None, landmark_nme=None, landmark_error_px=None)
            continue
        result = scorers.landmarks.measure(restored[position], np.asarray(landmarks, np.float64))
        row.update(landmarks_detected=result.detected, landmark_nme=_round(result.nme),
                   landmark_error_px=_round(result.error_px))
    return rows


def _evaluate_source(scorers: Scorers, source: Source, pairs_dir: Path, pair_records: list[dict], batch_size: int,
                     fid_dirs: tuple[Path, Path] | None, progress: tqdm) -> list[dict]:
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


def _mean(values: list) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return _round(float(np.mean(kept))) if kept else None


def aggregate(rows: list[dict], gt_embeddings: Mapping[str, np.ndarray], infos: Mapping[str, m.MetricInfo]
              ) -> dict:
    """Set-level numbers of one (preset, restorer); a metric that could not be computed carries its reason."""
    count = len(rows)
    out: dict = {"count": count}
    for name in (*m.PAIR_METRICS, *m.NR_METRICS):
        info = infos[name]
        if not info.available:
            out[name] = info.reason
            continue
        value = _mean([row[name] for row in rows])
        out[name] = value if value is not None else f"{m.NOT_COMPUTED}: no image gave a value"
        failed = sum(row[name] is None for row in rows)
        if failed:
            out[f"{name}_failures"] = failed
    out["identity_distance"] = _mean([row["identity_distance"] for row in rows])
    out["identity_angle_deg"] = _mean([row["identity_angle_deg"] for row in rows])
    with_gt = [row for row in rows if row["landmarks_detected"] is not None]
    detected = [row for row in with_gt if row["landmarks_detected"]]
    no_face = f"{m.NOT_COMPUTED}: no face found in any of {len(with_gt)} images" if with_gt else \
        f"{m.NOT_COMPUTED}: no stored GT landmarks"
    out["landmark_nme"] = _mean([row["landmark_nme"] for row in detected]) if detected else no_face
    out["landmark_error_px"] = _mean([row["landmark_error_px"] for row in detected]) if detected else no_face
    out["landmark_failures"] = sum(1 for row in with_gt if not row["landmarks_detected"])
    out["landmark_evaluated"] = len(with_gt)
    if len(with_gt) < count:
        out["landmark_missing_gt"] = count - len(with_gt)
    if count >= 2:
        restored = np.stack([row["embedding"] for row in rows])
        gt = np.stack([gt_embeddings[row["id"]] for row in rows])
        out["fd_dlib128"] = _round(m.frechet_distance(restored, gt))
    else:
        out["fd_dlib128"] = f"{m.NOT_COMPUTED}: needs at least 2 faces, got {count}"
    return out


def _calibrate(scorers: Scorers, gallery_ids: list[str]) -> m.Calibration | str:
    labels = [scorers.labels[key] for key in gallery_ids]
    if len(set(labels)) < 2:
        return f"{m.NOT_COMPUTED}: the test gallery holds {len(set(labels))} person; no impostor pairs"
    return m.calibrate(np.stack([scorers.gt_embeddings[key] for key in gallery_ids]), labels)


def calibration_entry(calibration: m.Calibration | str) -> dict | str:
    """The calibration's figures for summary.json and metrics.json (numbers at the leaves)."""
    if isinstance(calibration, str):
        return calibration
    return {"identities": calibration.identities, "faces": calibration.faces,
            "impostor_pairs": calibration.impostor_pairs, "threshold": MATCH_THRESHOLD,
            "far_at_threshold": _round(calibration.far_at_default),
            "far_at_threshold_ci_low": _round(calibration.far_at_default_ci[0]),
            "far_at_threshold_ci_high": _round(calibration.far_at_default_ci[1]),
            "far_target": m.FAR_TARGET, "threshold_at_far_target": _round(calibration.threshold_at_far),
            "threshold_at_far_target_ci_low": _round(calibration.threshold_at_far_ci[0]),
            "threshold_at_far_target_ci_high": _round(calibration.threshold_at_far_ci[1]),
            "far_target_resolvable": calibration.resolvable,
            "note": _calibration_note(calibration)}


def _calibration_note(calibration: m.Calibration) -> str:
    text = (f"impostor pairs: every pair of test GT faces of different people ({calibration.impostor_pairs} pairs, "
            f"{calibration.identities} people); intervals: {m.CALIBRATION_RESAMPLES} bootstrap resamples of the "
            "people (pairs share faces, so a binomial interval over pairs would be too narrow)")
    if not calibration.resolvable:
        text += (f"; with {calibration.impostor_pairs} impostor pairs a false-accept rate below "
                 f"1/{calibration.impostor_pairs} cannot be resolved, so the threshold at FAR {m.FAR_TARGET:g} is "
                 "only the smallest impostor distance, not a measured operating point")
    return text


def _rate(successes: int, trials: int, key: str) -> dict:
    """{key: rate, key_ci_low, key_ci_high}: a proportion with its Wilson 95% interval."""
    low, high = m.wilson_interval(successes, trials)
    return {key: _round(successes / trials), f"{key}_ci_low": _round(low), f"{key}_ci_high": _round(high)}


def identification(rows: list[dict], gt_embeddings: Mapping[str, np.ndarray], labels: Mapping[str, str],
                   gallery_ids: list[str], calibration: m.Calibration | str) -> dict:
    """Rank-1 identification and the verification match rates (0.6 and the calibrated threshold), with CIs.

    Sets each row's "rank1_correct". The gallery is the preset's GT faces; a gallery of one person identifies
    nothing, so every figure then says why it is missing.
    """
    gallery_labels = [labels[key] for key in gallery_ids]
    people = len(set(gallery_labels))
    out: dict = {"gallery_faces": len(gallery_ids), "gallery_identities": people}
    count = len(rows)
    if count == 0:
        return {**out, "rank1_accuracy": f"{m.NOT_COMPUTED}: no test faces",
                "identity_match_rate": f"{m.NOT_COMPUTED}: no test faces"}
    matches = sum(bool(row["identity_match"]) for row in rows)
    out.update(_rate(matches, count, "identity_match_rate"))
    if people < 2:
        reason = f"{m.NOT_COMPUTED}: the test gallery holds {people} person; identification needs two or more"
        out.update(rank1_accuracy=reason, identity_match_rate_at_far=reason)
        for row in rows:
            row["rank1_correct"] = None
        return out
    correct = m.rank1_correct(np.stack([row["embedding"] for row in rows]), [labels[row["id"]] for row in rows],
                              np.stack([gt_embeddings[key] for key in gallery_ids]), gallery_labels)
    for row, hit in zip(rows, correct, strict=True):
        row["rank1_correct"] = bool(hit)
    out.update(_rate(int(correct.sum()), count, "rank1_accuracy"), rank1_correct=int(correct.sum()))
    if isinstance(calibration, str):
        out["identity_match_rate_at_far"] = calibration
    else:
        distances = np.asarray([row["identity_distance"] for row in rows], np.float64)
        out.update(_rate(int((distances < calibration.threshold_at_far).sum()), count, "identity_match_rate_at_far"))
    return out


def circularity(restorer: str, description: object) -> str:
    """Whether a restorer was trained with the network that scores identity: 'yes: ...', 'no: ...', 'unknown: ...'."""
    if restorer in UNTRAINED:
        return "no: not a trained model"
    record = description.get("training_losses") if isinstance(description, Mapping) else None
    if record is None:
        return f"unknown: the restore index records no training losses for {restorer}"
    if isinstance(record, str):
        return record if record.startswith("unknown") else f"unknown: {record}"
    shared = []
    for term, what in (("identity_loss", "identity loss"), ("perceptual_loss", "perceptual loss (feature maps)")):
        entry = record.get(term) if isinstance(record.get(term), Mapping) else {}
        weight = entry.get("weight")
        if entry.get("network") == "dlib" and isinstance(weight, int | float) and weight > 0:
            shared.append(f"{what} weight {weight:g}")
    source = record.get("source", "losses_active.json")
    if shared:
        return (f"yes: trained with dlib's face network, the network that scores identity here ("
                f"{'; '.join(shared)}; {source}): its identity figures are optimistic, not independent evidence")
    return f"no: no dlib-network loss in training ({source})"


def _csv_value(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _accuracy(params: Params, results: Mapping[str, Mapping[str, Mapping]], not_run: Mapping[str, str],
              calibrations: Mapping[str, object]) -> dict:
    """The headline: rank-1 of the headline restorer on the headline preset, the secondary figures beside it."""
    restorer, preset = params.evaluate.headline_restorer, params.evaluate.headline_preset
    target = params.evaluate.accuracy_target
    accuracy: dict = {"definition": ACCURACY_DEFINITION, "restorer": restorer, "preset": preset, "target": target}
    entry: Mapping = {}
    if restorer in not_run:
        value: object = f"{m.NOT_COMPUTED}: restorer {restorer} {not_run[restorer]}"
    elif preset not in results or restorer not in results[preset]:
        value = f"{m.NOT_COMPUTED}: no results for restorer {restorer} on preset {preset}"
    else:
        entry = results[preset][restorer]
        value = entry.get("rank1_accuracy", f"{m.NOT_COMPUTED}: no rank-1 figure for {restorer} on {preset}")
    accuracy["value"] = value
    accuracy["ci_low"] = entry.get("rank1_accuracy_ci_low")
    accuracy["ci_high"] = entry.get("rank1_accuracy_ci_high")
    accuracy["n"] = entry.get("count")
    accuracy["meets_target"] = (value >= target) if isinstance(value, float) else None
    accuracy["identity_metric_circularity"] = entry.get("identity_metric_circularity",
                                                        f"unknown: restorer {restorer} has no results")
    calibration = calibrations.get(preset, f"{m.NOT_COMPUTED}: no results on preset {preset}")
    accuracy["verification"] = {
        key: entry.get(key) for key in ("identity_match_rate", "identity_match_rate_ci_low",
                                        "identity_match_rate_ci_high", "identity_match_rate_at_far",
                                        "identity_match_rate_at_far_ci_low", "identity_match_rate_at_far_ci_high")}
    accuracy["calibration"] = calibration
    return accuracy


def run(params: Params, pairs_dir: Path, restored_dir: Path, out_dir: Path, metrics_path: Path) -> dict:
    """Score every restored test face; write per_image.csv, summary.json, receipt and metrics.json."""
    started = time.monotonic()
    pairs_dir, restored_dir, out_dir, metrics_path = map(Path, (pairs_dir, restored_dir, out_dir, metrics_path))
    pairs_index = read_index(pairs_dir)
    restored_index = read_index(restored_dir)
    sources, not_run = _sources(pairs_dir, pairs_index, restored_dir, restored_index)
    torch.set_num_threads(params.evaluate.threads)
    device = _device(params.evaluate.device)
    scorers = Scorers(pyiqa=m.build_pyiqa_metrics(device, params.evaluate.ssim_backend),
                      identity=m.IdentityScorer(device, params.evaluate.batch_size),
                      landmarks=m.LandmarkScorer(params.evaluate.landmark_frame), device=device)
    fid = scorers.pyiqa["fid"]

    results: dict[str, dict[str, dict]] = {}
    calibrations: dict[str, m.Calibration | str] = {}
    csv_rows: list[list[object]] = []
    test_presets = pair_presets(pairs_index, TEST_SPLIT)
    total = sum(int(test_presets[s.preset]["count"]) for s in sources)
    with staged_output(out_dir) as staging, tempfile.TemporaryDirectory(prefix="dlfp-fid-") as scratch:
        with tqdm(total=total, desc="evaluate", unit="img") as progress:
            for source in sources:
                progress.set_postfix_str(f"{source.restorer}/{source.preset}")
                fid_dirs = None
                if fid.available:
                    fid_dirs = (Path(scratch) / source.preset / source.restorer, Path(scratch) / "gt")
                    for folder in fid_dirs:
                        folder.mkdir(parents=True, exist_ok=True)
                pair_records = test_presets[source.preset]["shards"]
                rows = _evaluate_source(scorers, source, pairs_dir, pair_records, params.evaluate.batch_size,
                                        fid_dirs, progress)
                gallery_ids = [row["id"] for row in rows]  # every source of a preset covers all its test pairs
                if source.preset not in calibrations:
                    calibrations[source.preset] = _calibrate(scorers, gallery_ids)
                summary = aggregate(rows, scorers.gt_embeddings, scorers.pyiqa)
                summary.update(identification(rows, scorers.gt_embeddings, scorers.labels, gallery_ids,
                                              calibrations[source.preset]))
                summary["identity_metric_circularity"] = circularity(
                    source.restorer, restored_index.get("restorers", {}).get(source.restorer, {}).get("description"))
                if fid_dirs is None:
                    summary["fid"] = fid.reason
                else:
                    summary["fid"] = _round(m.fid_between(fid.compute, *fid_dirs))
                results.setdefault(source.preset, {})[source.restorer] = summary
                csv_rows += [[source.preset, source.restorer, row["id"], *(_csv_value(row[c]) for c in COLUMNS[3:])]
                             for row in rows]
        for preset in results:
            for name, reason in not_run.items():
                results[preset][name] = {"status": "not run", "reason": reason}
        calibration = {preset: calibration_entry(value) for preset, value in calibrations.items()}
        accuracy = _accuracy(params, results, not_run, calibration)
        settings = {name: {**info.settings, "status": STATUS_OK if info.available else info.reason}
                    for name, info in scorers.pyiqa.items()}
        settings.update({
            "identity": {"network": "dlib_face_recognition_resnet_model_v1 (PyTorch port)", "frame": "ffhq",
                         "distance": "euclidean", "match_threshold": MATCH_THRESHOLD,
                         "angle": "degrees between descriptors",
                         "rank1": "nearest GT descriptor among the preset's test GT faces is the same person's "
                                  "(ffhq_id; copies of one id are one person, never distractors); ties count as "
                                  "wrong; Wilson 95% interval",
                         "calibration": f"impostor pairs = test GT faces of different people; FAR of "
                                        f"{MATCH_THRESHOLD} and the threshold at FAR {m.FAR_TARGET:g}; "
                                        f"{m.CALIBRATION_RESAMPLES} bootstrap resamples of people for intervals",
                         "circularity": "per restorer, from the restore index (the train stage's "
                                        "losses_active.json beside the weights)"},
            "landmarks": {"detector": "dlib HOG", "upsample": m.DETECT_UPSAMPLE,
                          "frame_px": params.evaluate.landmark_frame, "min_box_iou": m.MIN_BOX_IOU,
                          "nme_normaliser": "GT outer-eye-corner distance (points 36, 45)",
                          "failures": "no detection overlapping the GT face box; counted, never dropped"},
            "fd_dlib128": {"space": "128-D dlib face descriptors", "note": "Frechet distance; not FID"},
        })
        write_csv_atomic(staging / PER_IMAGE_NAME, COLUMNS, csv_rows)
        histograms = {preset: {"edges": value.histogram_edges, "counts": value.histogram_counts}
                      for preset, value in calibrations.items() if isinstance(value, m.Calibration)}
        summary_doc = {"metrics": settings, "results": results, "not_run": not_run, "accuracy": accuracy,
                       "calibration": calibration, "impostor_histograms": histograms}
        write_json_atomic(staging / SUMMARY_NAME, summary_doc)
        counts = {preset: {name: r.get("count", 0) for name, r in per.items()} for preset, per in results.items()}
        write_receipt(staging, stage="evaluate", params_hash=params.section_hash("evaluate"), seed=None,
                      counts=counts, inputs={"pairs": str(pairs_dir), "restored": str(restored_dir),
                                             "pairs_index_sha256": streams.index_digest(pairs_dir),
                                             "restored_index_sha256": streams.index_digest(restored_dir)},
                      packages=("torch", "pyiqa", "dlib-bin", "scipy", "numpy"),
                      extra={"not_computed": {name: info.reason for name, info in scorers.pyiqa.items()
                                              if not info.available}, "not_run": not_run})
    write_json_atomic(metrics_path, {**results, "accuracy": accuracy, "calibration": calibration,
                                     "colour_space": m.COLOUR_SPACES})

    elapsed = time.monotonic() - started
    value = accuracy["value"]
    headline = f"{value:.3f} [{accuracy['ci_low']:.3f}, {accuracy['ci_high']:.3f}]" if isinstance(value, float) \
        else value
    print(f"evaluate: {len(csv_rows)} images ({len(sources)} preset x restorer sets) in {elapsed:.1f} s; "
          f"rank-1 accuracy ({accuracy['restorer']}/{accuracy['preset']}) {headline}, target {accuracy['target']} "
          f"-> {out_dir}, {metrics_path}")
    return {"images": len(csv_rows), "accuracy": accuracy, "not_run": not_run, "seconds": round(elapsed, 1),
            "out": str(out_dir), "metrics": str(metrics_path)}
