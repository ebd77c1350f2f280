"""The evaluate stage's set-level figures: means, rank-1 and match rates with intervals, calibration, headline.

Every figure of one (preset, restorer) comes from its per-image rows (scoring.py); a figure that cannot be
computed carries its "not computed: ..." reason instead of a number. Imports dlfp.metrics and the stage's
scoring module; nothing imports it but the stage.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from dlfp.layout import LQ_RESTORER, NOT_COMPUTED, STATUS_OK
from dlfp.metrics.frechet import frechet_distance
from dlfp.metrics.identity import (
    CALIBRATION_RESAMPLES,
    FAR_TARGET,
    Calibration,
    calibrate,
    rank1_correct,
    wilson_interval,
)
from dlfp.metrics.iqa import NR_METRICS, PAIR_METRICS, MetricInfo
from dlfp.metrics.landmarks import DETECT_UPSAMPLE, MIN_BOX_IOU
from dlfp.models.dlib_resnet import MATCH_THRESHOLD
from dlfp.params import Params
from dlfp.stages.evaluate.scoring import Scorers, round_figure

ACCURACY_DEFINITION = ("rank-1 identification: fraction of restored test faces whose nearest GT face descriptor "
                       "(dlib, 128-D, euclidean) among all test GT faces of the preset belongs to the same person "
                       "(copies of one FFHQ id count as one person); 95% Wilson interval")
UNTRAINED = ("bicubic", LQ_RESTORER)  # restorers without learned weights

def _mean(values: list) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return round_figure(float(np.mean(kept))) if kept else None


def aggregate(rows: list[dict], gt_embeddings: Mapping[str, np.ndarray], infos: Mapping[str, MetricInfo]
              ) -> dict:
    """Set-level numbers of one (preset, restorer); a metric that could not be computed carries its reason."""
    count = len(rows)
    out: dict = {"count": count}
    for name in (*PAIR_METRICS, *NR_METRICS):
        info = infos[name]
        if not info.available:
            out[name] = info.reason
            continue
        value = _mean([row[name] for row in rows])
        out[name] = value if value is not None else f"{NOT_COMPUTED}: no image gave a value"
        failed = sum(row[name] is None for row in rows)
        if failed:
            out[f"{name}_failures"] = failed
    out["identity_distance"] = _mean([row["identity_distance"] for row in rows])
    out["identity_angle_deg"] = _mean([row["identity_angle_deg"] for row in rows])
    with_gt = [row for row in rows if row["landmarks_detected"] is not None]
    detected = [row for row in with_gt if row["landmarks_detected"]]
    no_face = f"{NOT_COMPUTED}: no face found in any of {len(with_gt)} images" if with_gt else \
        f"{NOT_COMPUTED}: no stored GT landmarks"
    out["landmark_nme"] = _mean([row["landmark_nme"] for row in detected]) if detected else no_face
    out["landmark_error_px"] = _mean([row["landmark_error_px"] for row in detected]) if detected else no_face
    out["landmark_failures"] = sum(1 for row in with_gt if not row["landmarks_detected"])
    out["landmark_evaluated"] = len(with_gt)
    if len(with_gt) < count:
        out["landmark_missing_gt"] = count - len(with_gt)
    if count >= 2:
        restored = np.stack([row["embedding"] for row in rows])
        gt = np.stack([gt_embeddings[row["id"]] for row in rows])
        out["fd_dlib128"] = round_figure(frechet_distance(restored, gt))
    else:
        out["fd_dlib128"] = f"{NOT_COMPUTED}: needs at least 2 faces, got {count}"
    return out


def calibrate_gallery(scorers: Scorers, gallery_ids: list[str]) -> Calibration | str:
    """The calibration of one preset's GT faces, or why there is none (a gallery of one person)."""
    labels = [scorers.labels[key] for key in gallery_ids]
    if len(set(labels)) < 2:
        return f"{NOT_COMPUTED}: the test gallery holds {len(set(labels))} person; no impostor pairs"
    return calibrate(np.stack([scorers.gt_embeddings[key] for key in gallery_ids]), labels)


def calibration_entry(calibration: Calibration | str) -> dict | str:
    """The calibration's figures for summary.json and metrics.json (numbers at the leaves)."""
    if isinstance(calibration, str):
        return calibration
    return {"identities": calibration.identities, "faces": calibration.faces,
            "impostor_pairs": calibration.impostor_pairs, "threshold": MATCH_THRESHOLD,
            "far_at_threshold": round_figure(calibration.far_at_default),
            "far_at_threshold_ci_low": round_figure(calibration.far_at_default_ci[0]),
            "far_at_threshold_ci_high": round_figure(calibration.far_at_default_ci[1]),
            "far_target": FAR_TARGET, "threshold_at_far_target": round_figure(calibration.threshold_at_far),
            "threshold_at_far_target_ci_low": round_figure(calibration.threshold_at_far_ci[0]),
            "threshold_at_far_target_ci_high": round_figure(calibration.threshold_at_far_ci[1]),
            "far_target_resolvable": calibration.resolvable,
            "note": _calibration_note(calibration)}


def _calibration_note(calibration: Calibration) -> str:
    text = (f"impostor pairs: every pair of test GT faces of different people ({calibration.impostor_pairs} pairs, "
            f"{calibration.identities} people); intervals: {CALIBRATION_RESAMPLES} bootstrap resamples of the "
            "people (pairs share faces, so a binomial interval over pairs would be too narrow)")
    if not calibration.resolvable:
        text += (f"; with {calibration.impostor_pairs} impostor pairs a false-accept rate below "
                 f"1/{calibration.impostor_pairs} cannot be resolved, so the threshold at FAR {FAR_TARGET:g} is "
                 "only the smallest impostor distance, not a measured operating point")
    return text


def _rate(successes: int, trials: int, key: str) -> dict:
    """{key: rate, key_ci_low, key_ci_high}: a proportion with its Wilson 95% interval."""
    low, high = wilson_interval(successes, trials)
    return {key: round_figure(successes / trials), f"{key}_ci_low": round_figure(low),
            f"{key}_ci_high": round_figure(high)}


def identification(rows: list[dict], gt_embeddings: Mapping[str, np.ndarray], labels: Mapping[str, str],
                   gallery_ids: list[str], calibration: Calibration | str) -> dict:
    """Rank-1 identification and the verification match rates (0.6 and the calibrated threshold), with CIs.

    Sets each row's "rank1_correct". The gallery is the preset's GT faces; a gallery of one person identifies
    nothing, so every figure then says why it is missing.
    """
    gallery_labels = [labels[key] for key in gallery_ids]
    people = len(set(gallery_labels))
    out: dict = {"gallery_faces": len(gallery_ids), "gallery_identities": people}
    count = len(rows)
    if count == 0:
        return {**out, "rank1_accuracy": f"{NOT_COMPUTED}: no test faces",
                "identity_match_rate": f"{NOT_COMPUTED}: no test faces"}
    matches = sum(bool(row["identity_match"]) for row in rows)
    out.update(_rate(matches, count, "identity_match_rate"))
    if people < 2:
        reason = f"{NOT_COMPUTED}: the test gallery holds {people} person; identification needs two or more"
        out.update(rank1_accuracy=reason, identity_match_rate_at_far=reason)
        for row in rows:
            row["rank1_correct"] = None
        return out
    correct = rank1_correct(np.stack([row["embedding"] for row in rows]), [labels[row["id"]] for row in rows],
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


def csv_value(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def headline_accuracy(params: Params, results: Mapping[str, Mapping[str, Mapping]], not_run: Mapping[str, str],
                      calibrations: Mapping[str, object]) -> dict:
    """The headline: rank-1 of the headline restorer on the headline preset, the secondary figures beside it."""
    restorer, preset = params.evaluate.headline_restorer, params.evaluate.headline_preset
    target = params.evaluate.accuracy_target
    accuracy: dict = {"definition": ACCURACY_DEFINITION, "restorer": restorer, "preset": preset, "target": target}
    entry: Mapping = {}
    if restorer in not_run:
        value: object = f"{NOT_COMPUTED}: restorer {restorer} {not_run[restorer]}"
    elif preset not in results or restorer not in results[preset]:
        value = f"{NOT_COMPUTED}: no results for restorer {restorer} on preset {preset}"
    else:
        entry = results[preset][restorer]
        value = entry.get("rank1_accuracy", f"{NOT_COMPUTED}: no rank-1 figure for {restorer} on {preset}")
    accuracy["value"] = value
    accuracy["ci_low"] = entry.get("rank1_accuracy_ci_low")
    accuracy["ci_high"] = entry.get("rank1_accuracy_ci_high")
    accuracy["n"] = entry.get("count")
    accuracy["meets_target"] = (value >= target) if isinstance(value, float) else None
    accuracy["identity_metric_circularity"] = entry.get("identity_metric_circularity",
                                                        f"unknown: restorer {restorer} has no results")
    calibration = calibrations.get(preset, f"{NOT_COMPUTED}: no results on preset {preset}")
    accuracy["verification"] = {
        key: entry.get(key) for key in ("identity_match_rate", "identity_match_rate_ci_low",
                                        "identity_match_rate_ci_high", "identity_match_rate_at_far",
                                        "identity_match_rate_at_far_ci_low", "identity_match_rate_at_far_ci_high")}
    accuracy["calibration"] = calibration
    return accuracy


def metric_settings(infos: Mapping[str, MetricInfo], landmark_frame: int) -> dict:
    """Every metric's settings and status, as summary.json records them."""
    settings = {name: {**info.settings, "status": STATUS_OK if info.available else info.reason}
                for name, info in infos.items()}
    settings.update({
        "identity": {"network": "dlib_face_recognition_resnet_model_v1 (PyTorch port)", "frame": "ffhq",
                     "distance": "euclidean", "match_threshold": MATCH_THRESHOLD,
                     "angle": "degrees between descriptors",
                     "rank1": "nearest GT descriptor among the preset's test GT faces is the same person's "
                              "(ffhq_id; copies of one id are one person, never distractors); ties count as "
                              "wrong; Wilson 95% interval",
                     "calibration": f"impostor pairs = test GT faces of different people; FAR of "
                                    f"{MATCH_THRESHOLD} and the threshold at FAR {FAR_TARGET:g}; "
                                    f"{CALIBRATION_RESAMPLES} bootstrap resamples of people for intervals",
                     "circularity": "per restorer, from the restore index (the train stage's "
                                    "losses_active.json beside the weights)"},
        "landmarks": {"detector": "dlib HOG", "upsample": DETECT_UPSAMPLE,
                      "frame_px": landmark_frame, "min_box_iou": MIN_BOX_IOU,
                      "nme_normaliser": "GT outer-eye-corner distance (points 36, 45)",
                      "failures": "no detection overlapping the GT face box; counted, never dropped"},
        "fd_dlib128": {"space": "128-D dlib face descriptors", "note": "Frechet distance; not FID"},
    })
    return settings
