"""The "at a glance" block of evaluation.html: preset x restorer with PSNR, SSIM and rank-1 and their intervals,
each restorer's paired difference from the two baselines (the LQ input, and bicubic when it was evaluated), and
the chart of the three against severity.

The verdict on a figure rests on the 95% interval of the per-face difference (restorer minus baseline, on the same
face ids of per_image.csv): PSNR and SSIM, a t-interval of the paired differences; rank-1, whose per-face value is
a hit or a miss, the exact McNemar interval (Clopper-Pearson on how the discordant faces split, scaled to the rate
difference, conditional on their number). "above"/"below" when the interval lies above/below 0, "level" otherwise.
A library of the evaluation page (it reads nothing itself); kept apart so that the page module stays short.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from dlfp.layout import LQ_RESTORER
from dlfp.report.evaluation_tables import (
    METRICS,
    NOT_COMPUTED_CELL,
    PAPER_PRESET,
    PAPER_SIZE,
    PAPER_TEST_COUNT,
    PAPER_TEST_SET,
    as_mapping,
    is_number,
    ordered,
)
from dlfp.report.model_card import t_interval
from dlfp.report.plots import Point, severity_panels

GLANCE_METRICS = ("psnr", "ssim", "rank1_accuracy")  # higher is better for all three
GLANCE_DIGITS = {"psnr": 2, "ssim": 4, "rank1_accuracy": 3}
SHORT_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "rank1_accuracy": "rank-1"}
UNITS = {"psnr": " dB", "ssim": "", "rank1_accuracy": ""}
PER_FACE_COLUMNS = {"psnr": "psnr", "ssim": "ssim", "rank1_accuracy": "rank1_correct"}  # per_image.csv
BICUBIC_RESTORER = "bicubic"  # the second baseline, when it was evaluated
BASELINES = ((LQ_RESTORER, "the LQ input", "LQ"), (BICUBIC_RESTORER, "bicubic", "bicubic"))  # name, label, short
CONFIDENCE = 0.95
LEVEL_NOTE = "(difference within noise)"


@dataclass(frozen=True)
class Difference:
    """Restorer minus one baseline on one figure: paired over `faces` shared faces, or (no per-face rows) the
    difference of the two means without an interval."""

    baseline: str  # the baseline's label in the verdict, e.g. "the LQ input"
    short: str  # ... and in the cell, e.g. "LQ"
    value: float
    low: float = math.nan
    high: float = math.nan
    faces: int = 0  # 0: not paired, means only

    @property
    def word(self) -> str:
        low, high = (self.low, self.high) if self.faces else (self.value, self.value)
        return "above" if low > 0 else "below" if high < 0 else "level"

    def text(self, key: str) -> str:
        digits = GLANCE_DIGITS[key]
        interval = (f" [{self.low:.{digits}f}, {self.high:.{digits}f}]" if self.faces
                    else " (means only: no paired faces)")
        return f"{self.value:+.{digits}f}{UNITS[key]}{interval} vs {self.short}"


@dataclass
class GlanceCell:
    text: str
    worse: bool = False  # below a baseline on this figure
    differences: list[str] = field(default_factory=list)  # "+0.77 dB [0.61, 0.93] vs LQ", one per baseline


@dataclass
class GlanceRow:
    preset: str
    restorer: str
    faces: str
    cells: list[GlanceCell]
    verdict: str  # against the baselines, in words
    worse: bool = False  # below a baseline on at least one figure
    paper: bool = False  # a row of the paper's own numbers


def _glance_point(entry: Mapping, key: str, intervals: Mapping) -> Point | None:
    value = entry.get(key)
    if not is_number(value):
        return None
    low, high = entry.get(f"{key}_ci_low"), entry.get(f"{key}_ci_high")
    if not (is_number(low) and is_number(high)):
        low, high = intervals.get(key, (math.nan, math.nan))
    return Point(float(value), float(low), float(high))


def _glance_text(point: Point | None, key: str) -> str:
    if point is None:
        return NOT_COMPUTED_CELL
    digits = GLANCE_DIGITS[key]
    interval = f" [{point.low:.{digits}f}, {point.high:.{digits}f}]" if math.isfinite(point.low) else ""
    return f"{point.value:.{digits}f}{interval}"


def _per_face(row: Mapping, key: str) -> float | None:
    """One face's value of a figure: a finite number, or a rank-1 hit as 1/0; None when missing."""
    text = str(row.get(PER_FACE_COLUMNS[key]) or "").strip().lower()
    if key == "rank1_accuracy":
        return {"true": 1.0, "false": 0.0}.get(text)
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def faces_by_run(per_image: list[dict]) -> dict[tuple[str, str], dict[str, Mapping]]:
    """per_image.csv rows as {(preset, restorer): {face id: row}}."""
    runs: dict[tuple[str, str], dict[str, Mapping]] = {}
    for row in per_image:
        runs.setdefault((str(row.get("preset", "")), str(row.get("restorer", ""))), {})[str(row.get("id", ""))] = row
    return runs


def paired_interval(restorer: np.ndarray, baseline: np.ndarray, key: str) -> tuple[float, float]:
    """95% interval of the mean per-face difference restorer - baseline (same faces, in the same order)."""
    if key == "rank1_accuracy":  # exact McNemar: only the faces that one hits and the other misses inform it
        wins, losses = int(np.sum(restorer > baseline)), int(np.sum(restorer < baseline))
        discordant = wins + losses
        if not discordant:
            return 0.0, 0.0
        share = stats.binomtest(wins, discordant).proportion_ci(CONFIDENCE, method="exact")
        return tuple(discordant * (2 * bound - 1) / len(restorer) for bound in (share.low, share.high))
    differences = restorer - baseline
    if np.ptp(differences) == 0:  # every face moved by the same amount: no spread to be uncertain about
        return float(differences[0]), float(differences[0])
    return t_interval(differences)


def difference(restorer_faces: Mapping[str, Mapping], baseline_faces: Mapping[str, Mapping], key: str,
               restorer: Point | None, baseline: Point | None, label: str, short: str) -> Difference | None:
    """The paired difference over the faces both rows scored; the difference of the means when none pair up."""
    pairs = [(_per_face(row, key), _per_face(baseline_faces[face], key)) for face, row in restorer_faces.items()
             if face in baseline_faces]
    pairs = [pair for pair in pairs if None not in pair]
    if len(pairs) > 1:
        ours, theirs = (np.asarray(values, dtype=float) for values in zip(*pairs, strict=True))
        low, high = paired_interval(ours, theirs, key)
        return Difference(label, short, float(np.mean(ours - theirs)), float(low), float(high), len(pairs))
    if restorer is None or baseline is None:
        return None
    return Difference(label, short, restorer.value - baseline.value)


def verdict(differences: Mapping[str, list[Difference]]) -> str:
    """'below the LQ input on PSNR (dB); level with bicubic on PSNR (dB), SSIM (difference within noise); ...'."""
    parts = []
    for _, label, _ in BASELINES:
        for word in ("below", "level", "above"):
            keys = [key for key in GLANCE_METRICS
                    if any(d.baseline == label and d.word == word for d in differences.get(key, []))]
            if keys:
                figures = ", ".join(SHORT_LABELS[key] for key in keys)
                parts.append(f"level with {label} on {figures} {LEVEL_NOTE}" if word == "level"
                             else f"{word} {label} on {figures}")
    return "; ".join(parts) or "no baseline figures to compare with"


def glance(results: Mapping, presets: list[str], restorer_order: list[str],
           intervals: Mapping[tuple[str, str, str], tuple[float, float]],
           per_image: list[dict] | None = None) -> tuple[list[GlanceRow], dict]:
    """The at-a-glance rows (preset x restorer: PSNR, SSIM, rank-1 with 95% intervals, the paired differences
    from each baseline and the verdict), the paper's Table 1 beside preset `paper` only, and the chart's points."""
    rows: list[GlanceRow] = []
    points: dict[str, dict[str, list[Point | None]]] = {key: {} for key in GLANCE_METRICS}
    faces = faces_by_run(per_image or [])
    for position, preset in enumerate(presets):
        per_restorer = ordered(as_mapping(results.get(preset)), restorer_order)
        figures_of = {}
        for restorer, entry in per_restorer.items():
            entry = as_mapping(entry)
            if entry.get("status") == "not run":
                continue
            own = {key: interval for (p, r, key), interval in intervals.items() if (p, r) == (preset, restorer)}
            figures_of[str(restorer)] = {key: _glance_point(entry, key, own) for key in GLANCE_METRICS}
        for restorer, figures in figures_of.items():
            for key, point in figures.items():
                points[key].setdefault(restorer, [None] * len(presets))[position] = point
            count = str(as_mapping(per_restorer.get(restorer)).get("count", "?"))
            if restorer == LQ_RESTORER:
                rows.append(GlanceRow(preset, restorer, count,
                                      [GlanceCell(_glance_text(figures[key], key)) for key in GLANCE_METRICS],
                                      "the LQ input itself (baseline)"))
                continue
            differences: dict[str, list[Difference]] = {}
            for baseline, label, short in BASELINES:
                if baseline == restorer or baseline not in figures_of:
                    continue
                for key in GLANCE_METRICS:
                    found = difference(faces.get((preset, restorer), {}), faces.get((preset, baseline), {}), key,
                                       figures[key], figures_of[baseline][key], label, short)
                    differences.setdefault(key, []).extend([found] if found else [])
            cells = [GlanceCell(_glance_text(figures[key], key),
                                any(d.word == "below" for d in differences.get(key, [])),
                                [d.text(key) for d in differences.get(key, [])]) for key in GLANCE_METRICS]
            rows.append(GlanceRow(preset, restorer, count, cells, verdict(differences),
                                  any(cell.worse for cell in cells)))
        if preset == PAPER_PRESET:
            specs = {spec.key: spec for spec in METRICS}
            for label, attribute in (("GFP-GAN", "paper_gfpgan"), ("its input", "paper_input")):
                values = [getattr(specs[key], attribute) if key in specs else None for key in GLANCE_METRICS]
                rows.append(GlanceRow(preset, f"paper: {label}", f"{PAPER_TEST_COUNT:,}",
                                      [GlanceCell(f"{value}" if value is not None else "—") for value in values],
                                      f"{PAPER_TEST_SET}, {PAPER_SIZE} px (the paper's Table 1)", paper=True))
    return rows, points


def severity_order(configured: Mapping, indexed: object) -> list[str]:
    """Presets from mild to severe as params.yaml lists them, the paper's own ranges last (not a severity level),
    then any preset only the pairs index knows."""
    names = [str(name) for name in configured if name != PAPER_PRESET]
    names += [PAPER_PRESET] * (PAPER_PRESET in configured)
    return names + [str(name) for name in as_mapping(indexed) if str(name) not in names]


def glance_chart(points: Mapping[str, Mapping[str, list[Point | None]]], presets: list[str]) -> str | None:
    labels = {spec.key: spec.label for spec in METRICS}
    panels = [(labels[key].split(" [")[0], points[key]) for key in GLANCE_METRICS]
    return severity_panels(panels, presets, "Restorers against severity (mean, 95% interval)")
