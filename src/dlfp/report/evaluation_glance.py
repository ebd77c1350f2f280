"""The "at a glance" block of evaluation.html: preset x restorer with PSNR, SSIM and rank-1 and their intervals,
where a restorer falls below the LQ input, and the chart of the three against severity.

A library of the evaluation page (it reads nothing itself); kept apart so that the page module stays short.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

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
from dlfp.report.plots import Point, severity_panels

GLANCE_METRICS = ("psnr", "ssim", "rank1_accuracy")  # higher is better for all three
GLANCE_DIGITS = {"psnr": 2, "ssim": 4, "rank1_accuracy": 3}
SHORT_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "rank1_accuracy": "rank-1"}


@dataclass
class GlanceCell:
    text: str
    worse: bool = False  # below the LQ input's mean


@dataclass
class GlanceRow:
    preset: str
    restorer: str
    faces: str
    cells: list[GlanceCell]
    verdict: str  # against the LQ input, in words
    worse: bool = False  # loses to the LQ input on at least one figure
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


def glance(results: Mapping, presets: list[str], restorer_order: list[str],
           intervals: Mapping[tuple[str, str, str], tuple[float, float]]) -> tuple[list[GlanceRow], dict]:
    """The at-a-glance rows (preset x restorer: PSNR, SSIM, rank-1 with 95% intervals, and the verdict against the
    LQ input), the paper's Table 1 beside preset `paper` only, and the points of the severity chart."""
    rows: list[GlanceRow] = []
    points: dict[str, dict[str, list[Point | None]]] = {key: {} for key in GLANCE_METRICS}
    for position, preset in enumerate(presets):
        per_restorer = ordered(as_mapping(results.get(preset)), restorer_order)
        lq = {key: _glance_point(as_mapping(per_restorer.get(LQ_RESTORER)), key, {}) for key in GLANCE_METRICS}
        for restorer, entry in per_restorer.items():
            entry = as_mapping(entry)
            if entry.get("status") == "not run":
                continue
            own = {key: interval for (p, r, key), interval in intervals.items() if (p, r) == (preset, restorer)}
            figures = {key: _glance_point(entry, key, own) for key in GLANCE_METRICS}
            for key, point in figures.items():
                points[key].setdefault(str(restorer), [None] * len(presets))[position] = point
            if restorer == LQ_RESTORER:
                rows.append(GlanceRow(preset, str(restorer), str(entry.get("count", "?")),
                                      [GlanceCell(_glance_text(figures[key], key)) for key in GLANCE_METRICS],
                                      "the LQ input itself (baseline)"))
                continue
            worse = [key for key in GLANCE_METRICS if figures[key] is not None and lq[key] is not None
                     and figures[key].value < lq[key].value]
            better = [key for key in GLANCE_METRICS if figures[key] is not None and lq[key] is not None
                      and figures[key].value > lq[key].value]
            if worse:
                verdict = "below the LQ input on " + ", ".join(SHORT_LABELS[key] for key in worse)
            elif better:
                verdict = "above the LQ input on " + ", ".join(SHORT_LABELS[key] for key in better)
            else:
                verdict = "no LQ figures to compare with" if not any(lq.values()) else "level with the LQ input"
            rows.append(GlanceRow(preset, str(restorer), str(entry.get("count", "?")),
                                  [GlanceCell(_glance_text(figures[key], key), key in worse) for key in GLANCE_METRICS],
                                  verdict, bool(worse)))
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
