"""The "Does the prior help?" section of training.html: GFP-GAN trained on the trained StyleGAN2 prior against the
same training on a randomly initialised decoder (same steps and seed), scored on the val pairs.

The figures come from one JSON file (report.prior_ablation, written by benchmarks/prior_ablation.py; no stage
writes it): per preset, each arm's PSNR, SSIM and rank-1 with their 95% intervals and the paired difference
(trained prior minus random decoder) with its own. The file is checked for its shape here, strictly, because a
half-read ablation would answer the project's base question wrongly: any missing or non-numeric figure makes the
whole section "not computed: <file>: <reason>". A missing file says which command writes it. The page still renders.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dlfp.report.readers import JSON_READ_ERRORS

ABLATION_SCRIPT = "benchmarks/prior_ablation.py"
ARMS = ("trained_prior", "random_decoder")
DIFFERENCE = "difference"  # trained_prior minus random_decoder, paired per face
ABLATION_METRICS = (("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 4), ("rank1_accuracy", "rank-1", 3))
RUN_KEYS = ("split", "steps", "seed", "command", "measured", "machine")  # shown as recorded


class AblationShapeError(ValueError):
    """The ablation file parses as JSON but is not shaped as benchmarks/prior_ablation.py writes it."""


@dataclass
class AblationRow:
    preset: str
    faces: str
    cells: list[str]  # per metric: trained prior, random decoder, difference (each "value [low, high]")
    verdicts: list[str]  # per metric: what the difference's interval says


@dataclass
class AblationView:
    path: str
    problem: str | None = None  # "not computed: ..." when there is nothing to show
    arm_labels: list[str] = field(default_factory=list)
    rows: list[AblationRow] = field(default_factory=list)
    claim: str = ""
    run: list[tuple[str, str]] = field(default_factory=list)  # (key, value) of RUN_KEYS


def _number(entry: Mapping, key: str, where: str) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AblationShapeError(f"{where}.{key} is not a finite number ({json.dumps(value)[:40]})")
    return float(value)


def _object(parent: Mapping, key: str, where: str) -> Mapping:
    value = parent.get(key)
    if not isinstance(value, Mapping):
        raise AblationShapeError(f"{where}{key} is missing or not an object")
    return value


def _figure(entry: Mapping, key: str, digits: int, where: str, signed: bool = False) -> tuple[str, float, float]:
    """'value [low, high]' of one figure with its 95% interval, and the interval's bounds."""
    value, low, high = (_number(entry, name, where) for name in (key, f"{key}_ci_low", f"{key}_ci_high"))
    if not low <= value <= high:
        raise AblationShapeError(f"{where}.{key}: the interval [{low:g}, {high:g}] does not hold the value {value:g}")
    return f"{value:{'+' if signed else ''}.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]", low, high


def _difference_verdict(low: float, high: float) -> str:
    if low > 0:
        return "the trained prior scores higher"
    if high < 0:
        return "the random decoder scores higher"
    return "level (difference within noise)"


def ablation_view(document: object, path: str) -> AblationView:
    """The section's table from the parsed file; AblationShapeError names the first thing out of shape."""
    if not isinstance(document, Mapping):
        raise AblationShapeError("not a JSON object")
    presets = _object(document, "presets", "")
    if not presets:
        raise AblationShapeError("presets is empty")
    claim = document.get("claim")
    if not isinstance(claim, str) or not claim.strip():
        raise AblationShapeError("claim (what the numbers can and cannot claim) is missing or empty")
    arms = document.get("arms") if isinstance(document.get("arms"), Mapping) else {}
    labels = [str(arms[arm].get("label", arm)) if isinstance(arms.get(arm), Mapping) else arm for arm in ARMS]
    rows = []
    for preset in presets:
        entry = _object(presets, preset, "presets.")
        cells, verdicts = [], []
        for key, _, digits in ABLATION_METRICS:
            for arm in ARMS:
                cells.append(_figure(_object(entry, arm, f"presets.{preset}."), key, digits,
                                     f"presets.{preset}.{arm}")[0])
            text, low, high = _figure(_object(entry, DIFFERENCE, f"presets.{preset}."), key, digits,
                                      f"presets.{preset}.{DIFFERENCE}", signed=True)
            cells.append(text)
            verdicts.append(_difference_verdict(low, high))
        rows.append(AblationRow(str(preset), str(entry.get("count", "?")), cells, verdicts))
    run = [(key, str(document[key]) if key in document else "not recorded") for key in RUN_KEYS]
    return AblationView(path, None, labels, rows, claim.strip(), run)


def read_ablation(path: str | None) -> AblationView | None:
    """The section for report.prior_ablation; None when the parameter is null (no section)."""
    if path is None:
        return None
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return AblationView(path, f"not computed: {path} does not exist (the ablation has not been run: run "
                                  f"{ABLATION_SCRIPT} as the README says)")
    except JSON_READ_ERRORS as error:
        return AblationView(path, f"not computed: {path}: unreadable ({type(error).__name__}: {error})")
    try:
        return ablation_view(document, path)
    except AblationShapeError as error:
        return AblationView(path, f"not computed: {path}: {error}")
