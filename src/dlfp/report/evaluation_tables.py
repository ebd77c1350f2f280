"""The metrics tables of reports/evaluation.html: every metric per preset and restorer beside the paper's Table 1.

Each row says the metric's direction, marks the best restorer and shows the 95% interval where the evaluate stage
recorded one. A metric that was not computed shows a short "n/c" in its cells and its reason once (`notes`). The
paper's CelebA-Test numbers stand only beside the `paper` preset, with one footnote per table on how far they can
be set beside ours. Reads only the mappings of the evaluate stage's summary.json; imports nothing from dlfp.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from dlfp.layout import NOT_COMPUTED

NOT_COMPUTED_CELL = "n/c"  # a cell's short form: the reason is said once, above the tables
PAPER_SIZE = 512
PAPER_PRESET = "paper"
PAPER_TEST_COUNT = 3000
PAPER_TEST_SET = f"CelebA-Test, {PAPER_TEST_COUNT:,} synthetic pairs"
HIGHER, LOWER = "higher", "lower"
ARROWS = {HIGHER: "↑", LOWER: "↓"}


@dataclass(frozen=True)
class MetricSpec:
    key: str  # key in summary.json's results
    label: str
    direction: str
    paper_name: str | None = None  # the paper's column, when it reports this quantity
    paper_gfpgan: float | None = None
    paper_input: float | None = None
    not_comparable: str | None = None  # why the paper's number measures something else


# The paper's Table 1 on CelebA-Test (gfpgan-spec section 6).
METRICS = (
    MetricSpec("psnr", "PSNR (dB, RGB)", HIGHER, "PSNR", 25.08, 25.35),
    MetricSpec("ssim", "SSIM (Y of YIQ)", HIGHER, "SSIM", 0.6777, 0.6848),
    MetricSpec("lpips", "LPIPS", LOWER, "LPIPS", 0.3646, 0.4866),
    MetricSpec("niqe", "NIQE", LOWER, "NIQE", 4.077, None),
    MetricSpec("fid", "FID (restored vs GT set)", LOWER, "FID", 42.62, 143.98),
    MetricSpec("rank1_accuracy", "rank-1 identification [95% CI] (dlib descriptors)", HIGHER),
    MetricSpec("identity_match_rate", "identity match rate (dlib distance < 0.6) [95% CI]", HIGHER),
    MetricSpec("identity_match_rate_at_far", "identity match rate at the threshold of FAR 1e-3 [95% CI]", HIGHER),
    MetricSpec("identity_distance", "identity distance (dlib descriptors)", LOWER),
    MetricSpec("identity_angle_deg", "identity angle (degrees, dlib descriptors)", LOWER, "Deg.", 34.60, None,
               "the paper's Deg. is the angle between ArcFace embeddings; these are dlib descriptors"),
    MetricSpec("landmark_nme", "landmark NME (inter-ocular)", LOWER),
    MetricSpec("landmark_error_px", "landmark error (px in the landmark frame)", LOWER, "LMD", 2.41, None,
               "the paper's LMD uses another landmark detector, in pixels at 512 px"),
    MetricSpec("landmark_failures", "landmark failures (no face found)", LOWER),
    MetricSpec("fd_dlib128", "FD in dlib's 128-D descriptor space (not FID)", LOWER),
)


@dataclass
class Cell:
    text: str
    exact: str = ""  # full-precision value for the title attribute
    kind: str = "num"  # num | missing | notrun | extra
    best: bool = False
    reason: str = ""  # why a missing cell has no value (said once per metric on the page)


@dataclass
class MetricRow:
    spec: MetricSpec
    cells: list[Cell]
    paper_gfpgan: str | None
    paper_input: str | None


@dataclass
class PresetTable:
    preset: str
    restorers: list[str]
    counts: list[str]
    rows: list[MetricRow]
    notes: list[str]
    with_paper: bool = False  # the paper's columns are shown (preset `paper` only)
    footnote: str = ""  # how far the paper's numbers compare with ours, once for the table


def as_mapping(value: object) -> Mapping:
    """The value when it is a mapping, else an empty one (pages read damaged JSON without raising)."""
    return value if isinstance(value, Mapping) else {}


def format_value(value: float) -> str:
    return f"{value:.4f}"


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def paper_footnote(size: int, count: str) -> str:
    """How far the paper's numbers in the `paper` preset's table can be set beside ours, said once for the table."""
    differences = [f"test set ({count} of our test faces vs {PAPER_TEST_SET})"]
    if size != PAPER_SIZE:
        differences.append(f"resolution ({size} px vs {PAPER_SIZE} px)")
    fid = next(spec.label for spec in METRICS if spec.key == "fid")
    apart = [f"{spec.label}: {spec.not_comparable}" for spec in METRICS if spec.not_comparable]
    return (f"Paper columns: GFP-GAN and its input on {PAPER_TEST_SET} at {PAPER_SIZE} px (Table 1). Comparable "
            f"roughly only, differs in {', '.join(differences)}; {fid} also in its reference set (our GT faces). "
            f"Not comparable: {'; '.join(apart)}.")


def ordered(per_restorer: Mapping, order: list[str]) -> dict:
    """Restorers in `order` first (unknown ones after, by name)."""
    rank: dict[str, int] = {}
    for name in order:
        rank.setdefault(name, len(rank))
    return {name: per_restorer[name] for name in sorted(per_restorer, key=lambda n: (rank.get(str(n), len(rank)),
                                                                                     str(n)))}


def preset_table(preset: str, per_restorer: Mapping, not_run: Mapping[str, str], size: int) -> PresetTable:
    restorers = [str(name) for name in per_restorer]
    entries = [as_mapping(per_restorer[name]) for name in per_restorer]
    counts = [str(entry.get("count", "not run" if entry.get("status") == "not run" else "?")) for entry in entries]
    evaluated = [entry.get("count") for entry in entries if is_number(entry.get("count"))]
    count_text = str(max(evaluated)) if evaluated else "?"
    rows = []
    with_paper = preset == PAPER_PRESET
    for spec in METRICS:
        cells = []
        for name, entry in zip(restorers, entries, strict=True):
            if entry.get("status") == "not run" or name in not_run and spec.key not in entry:
                cells.append(Cell("not run", kind="notrun"))
                continue
            value = entry.get(spec.key)
            if is_number(value):
                extra = _failures(spec.key, entry)
                cells.append(Cell(format_value(float(value)) if isinstance(value, float) else str(value),
                                  exact=repr(value), kind="num" if not extra else "extra"))
                cells[-1].text += interval_text(entry, spec.key)
                if extra:
                    cells[-1].text += f" ({extra})"
            else:
                reason = value if isinstance(value, str) else f"{NOT_COMPUTED}: not in the evaluation output"
                cells.append(Cell(NOT_COMPUTED_CELL, kind="missing", reason=reason))
        _mark_best(cells, [entry.get(spec.key) for entry in entries], spec.direction)
        rows.append(MetricRow(spec, cells,
                              format_value(spec.paper_gfpgan) if with_paper and spec.paper_gfpgan is not None
                              else None,
                              format_value(spec.paper_input) if with_paper and spec.paper_input is not None
                              else None))
    notes = [f"{name}: {reason}" for name, reason in not_run.items() if name in restorers]
    return PresetTable(preset, restorers, counts, rows, notes, with_paper,
                       paper_footnote(size, count_text) if with_paper else "")


def missing_notes(tables: list[PresetTable]) -> list[tuple[str, list[str]]]:
    """Each metric that is missing somewhere, once: (its label, the distinct reasons), in METRICS order."""
    reasons: dict[str, dict[str, None]] = {}
    for table in tables:
        for row in table.rows:
            for cell in row.cells:
                if cell.kind == "missing":
                    reasons.setdefault(row.spec.label, {})[cell.reason] = None
    return [(spec.label, list(reasons[spec.label])) for spec in METRICS if spec.label in reasons]


def interval_text(entry: Mapping, key: str) -> str:
    """' [low, high]' when the entry holds the figure's 95% interval, else ''."""
    low, high = entry.get(f"{key}_ci_low"), entry.get(f"{key}_ci_high")
    return f" [{low:.3f}, {high:.3f}]" if is_number(low) and is_number(high) else ""


def _failures(key: str, entry: Mapping) -> str:
    """Images a metric could not score, said beside its mean (a mean over fewer faces)."""
    if key in ("landmark_nme", "landmark_error_px") and is_number(entry.get("landmark_failures")) \
            and entry.get("landmark_failures"):
        return f"over {int(entry.get('landmark_evaluated', 0)) - int(entry['landmark_failures'])} found faces"
    failed = entry.get(f"{key}_failures")
    return f"{failed} images without a value" if is_number(failed) and failed else ""


def _mark_best(cells: list[Cell], values: list[object], direction: str) -> None:
    numbers = [(float(v), i) for i, v in enumerate(values) if is_number(v) and cells[i].kind != "notrun"]
    if len(numbers) < 2:
        return
    best = max(numbers)[0] if direction == HIGHER else min(numbers)[0]
    if all(value == best for value, _ in numbers):
        return
    for value, position in numbers:
        cells[position].best = value == best
