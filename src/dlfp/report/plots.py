"""Image and plot helpers for the reports.

Everything comes back as a `data:` URI so a page is one file that can be moved or mailed alone. Plots use
matplotlib's object API (no pyplot global state, Agg rendering) and carry no timestamps, so a rebuild from the
same inputs gives the same bytes.
"""

from __future__ import annotations

import base64
import io
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, UnidentifiedImageError

from dlfp.io.images import encode_jpeg

# Component boxes get fixed colours so a reader can learn them once.
BOX_COLOURS = {"left_eye": (0, 200, 255), "right_eye": (255, 200, 0), "mouth": (255, 60, 200)}
LANDMARK_COLOUR = (60, 255, 60)
MAX_LIST_LENGTH = 8  # longer lists in logged parameters are arrays, not scalars: not histogrammed
Scalar = float | int | str | bool | None
MAX_LINE_POINTS = 2000  # more points than this per curve are bucket-averaged
LINE_COLOURS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2")
# One chart style for every page: the same font, sizes and light grid; names are never read as TeX.
CHART_RC = {"text.parse_math": False, "svg.hashsalt": "dlfp", "font.family": "DejaVu Sans", "font.size": 8,
            "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
            "ytick.labelsize": 7, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
            "grid.color": "#e8e8e8", "grid.linewidth": 0.6}
# A fixed colour per restorer, the same in every chart (the LQ input is grey: it is the baseline).
RESTORER_COLOURS = {"lq": "#8c8c8c", "bicubic": "#f58518", "gfpgan": "#4c78a8"}
OTHER_RESTORER_COLOURS = ("#54a24b", "#e45756", "#72b7b2", "#b279a2")


def restorer_colour(name: str) -> str:
    """The restorer's fixed colour; a restorer without one gets a stable colour from its name."""
    if name in RESTORER_COLOURS:
        return RESTORER_COLOURS[name]
    return OTHER_RESTORER_COLOURS[sum(name.encode("utf-8")) % len(OTHER_RESTORER_COLOURS)]


def data_uri(payload: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def figure_uri(figure: Figure) -> str:
    """A matplotlib figure as a PNG data: URI without the Software tag (same inputs, same bytes). Call it inside
    the figure's rc_context: the figure is drawn here."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return data_uri(buffer.getvalue(), "image/png")


def image_uri(image: Image.Image, fmt: str = "PNG") -> str:
    """PNG for degraded images (no extra artefacts); JPEG for plain thumbnails (small pages)."""
    if fmt == "JPEG":
        return data_uri(encode_jpeg(np.asarray(image.convert("RGB")), 88), "image/jpeg")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return data_uri(buffer.getvalue(), "image/png")


def decode_thumbnail(payload: bytes, side: int) -> tuple[Image.Image, float] | None:
    """Decode and shrink to at most `side` px; (thumbnail, scale), or None when unreadable."""
    try:
        with Image.open(io.BytesIO(payload)) as opened:
            image = opened.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    scale = min(1.0, side / max(image.size))
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image, scale


def _finite_point(value: object) -> tuple[float, float] | None:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) < 2:
        return None
    try:
        x, y = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        return None
    return (x, y) if math.isfinite(x) and math.isfinite(y) else None


def _to_thumb(value: float, scale: float) -> float:
    """Pixel-centre coordinates (0, 0 = centre of the top-left pixel, as align writes) to thumbnail ones."""
    return (value + 0.5) * scale - 0.5


def draw_annotations(image: Image.Image, scale: float, landmarks: object, boxes: object) -> Image.Image:
    """Draw the 68 landmarks and the component boxes [cx, cy, half]; malformed entries are skipped.

    The meta's face_box is in input-image pixels, not aligned ones, so it is not drawn here.
    """
    image = image.copy()
    draw = ImageDraw.Draw(image)
    for point in landmarks if isinstance(landmarks, Sequence) and not isinstance(landmarks, str) else ():
        xy = _finite_point(point)
        if xy is not None:
            x, y = _to_thumb(xy[0], scale), _to_thumb(xy[1], scale)
            draw.ellipse((x - 1.2, y - 1.2, x + 1.2, y + 1.2), fill=LANDMARK_COLOUR)
    for name, colour in BOX_COLOURS.items():
        entry = boxes.get(name) if isinstance(boxes, Mapping) else None
        centre = _finite_point(entry)
        if centre is None or len(entry) < 3 or not isinstance(entry[2], int | float):  # type: ignore[arg-type]
            continue
        half = float(entry[2]) * scale  # type: ignore[index]
        x, y = _to_thumb(centre[0], scale), _to_thumb(centre[1], scale)
        draw.rectangle((x - half, y - half, x + half, y + half), outline=colour, width=1)
    return image


def flatten_scalars(value: object, prefix: str = "") -> dict[str, Scalar]:
    """Flatten logged parameters to dotted scalar keys; short numeric lists become key[i], arrays go."""
    if isinstance(value, Mapping):
        flat: dict[str, Scalar] = {}
        for key in sorted(value, key=str):
            flat.update(flatten_scalars(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(value, list | tuple):
        if len(value) > MAX_LIST_LENGTH or not all(isinstance(item, int | float | None) for item in value):
            return {}
        return {f"{prefix}[{index}]": item for index, item in enumerate(value)}
    if value is None or isinstance(value, str | bool | int | float):
        return {prefix: value}
    return {}


def _is_number(value: Scalar) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _plot_one(ax, name: str, values: list[Scalar]) -> None:  # noqa: ANN001 - matplotlib Axes
    present = [value for value in values if value is not None]
    missing = len(values) - len(present)
    if not present:
        ax.text(0.5, 0.5, "always null\n(not applied)", ha="center", va="center", fontsize=8, color="#777777")
        ax.set_xticks([])
        ax.set_yticks([])
    elif all(_is_number(value) for value in present):
        numbers = [float(value) for value in present]  # type: ignore[arg-type]
        ax.hist(numbers, bins=min(20, max(1, len(set(numbers)))), color="#4c78a8", edgecolor="white")
    else:
        counts = Counter(str(value).lower() if isinstance(value, bool) else str(value) for value in present)
        labels = sorted(counts)
        ax.bar(range(len(labels)), [counts[label] for label in labels], color="#f58518")
        ax.set_xticks(range(len(labels)), [label[:12] for label in labels], rotation=30, fontsize=7)
    title = f"{name[:32]}  (n={len(present)}" + (f", null {missing})" if missing else ")")
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=7)


def _small_multiples(count: int, columns: int, *, panel: tuple[float, float], extra: float, margin: float,
                     left: float, hspace: float, title: str) -> tuple[Figure, np.ndarray]:
    """A titled figure of `count` panels (width, height in inches) in rows of `columns`; `extra` inches of height
    for the title and labels, `margin` inches below and above the panels. Fixed margins, because constrained
    layout costs seconds per figure on a busy 2-core machine."""
    rows = math.ceil(count / columns)
    height = panel[1] * rows + extra
    figure = Figure(figsize=(panel[0] * columns, height), dpi=80)
    figure.subplots_adjust(left=left, right=0.98, bottom=margin / height, top=1 - margin / height,
                           wspace=0.3, hspace=hspace)
    figure.suptitle(title, fontsize=10, y=1 - 0.12 / height)
    return figure, figure.subplots(rows, columns, squeeze=False).ravel()


def histogram_grid(samples: Sequence[Mapping[str, Scalar]], title: str, columns: int = 4) -> str | None:
    """Small multiples, one panel per logged parameter; None when there is nothing to plot."""
    every = {name for sample in samples for name in sample}
    # A key that is null in some samples and a list/dict in others is shown through its parts only.
    names = sorted(name for name in every
                   if not any(other.startswith((f"{name}[", f"{name}.")) for other in every))
    if not names:
        return None
    # Names come from metadata: never let matplotlib read them as TeX.
    with rc_context(CHART_RC):
        figure, axes = _small_multiples(len(names), columns, panel=(3.0, 2.2), extra=0.5, margin=0.5, left=0.05,
                                        hspace=0.55, title=title[:80])
        for ax, name in zip(axes, names, strict=False):
            _plot_one(ax, name, [sample.get(name) for sample in samples])
        for ax in axes[len(names):]:
            ax.set_axis_off()
        return figure_uri(figure)


@dataclass(frozen=True)
class Series:
    """One line of a panel: x and y values (NaN where a step did not log the value), drawn thin or bold, with an
    optional interval band (low, high per x; drawn as given, without decimation: for short curves)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    emphasis: bool = True
    band: tuple[Sequence[float], Sequence[float]] | None = None
    band_label: str = ""


@dataclass(frozen=True)
class Reference:
    """A horizontal reference level in a panel (e.g. the same measurement on real data)."""

    label: str
    value: float


def decimate(x: np.ndarray, y: np.ndarray, max_points: int = MAX_LINE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Bucket means when a curve has more points than a plot can show (an 800k-step log would be a blur)."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) <= max_points:
        return x, y
    buckets = np.array_split(np.arange(len(x)), max_points)
    return (np.array([x[b].mean() for b in buckets]), np.array([y[b].mean() for b in buckets]))


def moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Centred running mean of the finite values, so a noisy GAN loss shows its trend."""
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    padded = np.pad(y, (window // 2, window - 1 - window // 2), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def line_panels(panels: Sequence[tuple[str, Sequence[Series]]], title: str, columns: int = 3,
                xlabel: str = "step", references: Mapping[str, Sequence[Reference]] | None = None) -> str | None:
    """Small multiples of line plots (one panel per quantity), with optional horizontal reference levels per panel
    name; None when no panel has a finite point."""
    drawable = [(name, lines) for name, lines in panels
                if any(np.isfinite(np.asarray(s.y, float)).any() for s in lines)]
    if not drawable:
        return None
    columns = max(1, min(columns, len(drawable)))
    with rc_context(CHART_RC):
        figure, axes = _small_multiples(len(drawable), columns, panel=(4.0, 2.4), extra=0.6, margin=0.55, left=0.07,
                                        hspace=0.6, title=title[:100])
        for ax, (name, lines) in zip(axes, drawable, strict=False):
            for number, series in enumerate(lines):
                x, y = decimate(np.asarray(series.x, float), np.asarray(series.y, float))
                colour = LINE_COLOURS[number % len(LINE_COLOURS)]
                if series.emphasis:
                    ax.plot(x, y, color=colour, linewidth=1.2, label=series.label[:40])
                else:
                    ax.plot(x, y, color=colour, linewidth=0.6, alpha=0.35, label=series.label[:40])
                if series.band is not None:
                    bx, low, high = (np.asarray(v, float) for v in (series.x, *series.band))
                    keep = np.isfinite(bx) & np.isfinite(low) & np.isfinite(high)
                    ax.fill_between(bx[keep], low[keep], high[keep], color=colour, alpha=0.2, linewidth=0,
                                    label=series.band_label[:40] or None)
            panel_references = [r for r in (references or {}).get(name, ()) if math.isfinite(r.value)]
            for number, reference in enumerate(panel_references):
                ax.axhline(reference.value, color=LINE_COLOURS[(len(lines) + number) % len(LINE_COLOURS)],
                           linestyle="--", linewidth=1.0, label=f"{reference.label[:36]}: {reference.value:.3g}")
            ax.set_title(name[:48], fontsize=8)
            ax.set_xlabel(xlabel, fontsize=7)
            ax.tick_params(labelsize=7)
            if len(lines) + len(panel_references) > 1 or any(series.band is not None for series in lines):
                ax.legend(fontsize=6, loc="best")
        for ax in axes[len(drawable):]:
            ax.set_axis_off()
        return figure_uri(figure)


def distance_histogram(edges: Sequence[float], counts: Sequence[int], thresholds: Sequence[tuple[str, float]],
                       title: str, overlay: Sequence[float] = (), overlay_label: str = "") -> str | None:
    """A histogram given as (edges, counts), as a density, with vertical threshold lines and an optional second
    distribution (raw values, binned on the same edges); None when there is nothing to draw."""
    edges_a, counts_a = np.asarray(edges, float), np.asarray(counts, float)
    if len(edges_a) != len(counts_a) + 1 or counts_a.sum() <= 0 or not np.isfinite(edges_a).all():
        return None
    density = counts_a / counts_a.sum() / np.diff(edges_a)
    with rc_context(CHART_RC):
        figure = Figure(figsize=(6.0, 2.8), dpi=80)
        figure.subplots_adjust(left=0.09, right=0.98, bottom=0.17, top=0.88)
        ax = figure.add_subplot()
        ax.stairs(density, edges_a, fill=True, color=LINE_COLOURS[0], alpha=0.45,
                  label=f"impostor pairs (n={int(counts_a.sum())})")
        values = np.asarray([v for v in overlay if math.isfinite(v)], float)
        if len(values):
            clipped = np.clip(values, edges_a[0], edges_a[-1])
            ax.hist(clipped, bins=edges_a, density=True, histtype="step", color=LINE_COLOURS[1], linewidth=1.2,
                    label=f"{overlay_label[:40]} (n={len(values)})")
        for number, (label, value) in enumerate(thresholds):
            if math.isfinite(value):
                ax.axvline(value, color=LINE_COLOURS[(number + 2) % len(LINE_COLOURS)], linestyle="--",
                           linewidth=1.2, label=f"{label[:40]}: {value:.3f}")
        ax.set_title(title[:90], fontsize=9)
        ax.set_xlabel("descriptor distance", fontsize=8)
        ax.set_ylabel("density", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper left")
        return figure_uri(figure)


@dataclass(frozen=True)
class Point:
    """One mean with its 95% interval (low, high; NaN where there is none)."""

    value: float
    low: float = math.nan
    high: float = math.nan


def severity_panels(panels: Sequence[tuple[str, Mapping[str, Sequence[Point | None]]]], presets: Sequence[str],
                    title: str) -> str | None:
    """Side-by-side panels of a figure against the severity presets (x, in the given order), one line per restorer
    in its fixed colour, with 95% interval bars; a missing point is a gap. None when nothing is drawable."""
    drawable = [(name, lines) for name, lines in panels
                if any(point is not None and math.isfinite(point.value)
                       for points in lines.values() for point in points)]
    if not drawable or not presets:
        return None
    with rc_context(CHART_RC):
        figure = Figure(figsize=(3.6 * len(drawable), 2.8), dpi=100)
        figure.subplots_adjust(left=0.06, right=0.99, bottom=0.12, top=0.8, wspace=0.25)
        figure.suptitle(title[:100], fontsize=10)
        axes = figure.subplots(1, len(drawable), squeeze=False).ravel()
        x = np.arange(len(presets), dtype=float)
        for ax, (name, lines) in zip(axes, drawable, strict=True):
            for offset, (restorer, points) in enumerate(lines.items()):
                shift = (offset - (len(lines) - 1) / 2) * 0.06  # interval bars side by side, not on top
                values = np.array([p.value if p is not None else math.nan for p in points], float)
                low = np.array([p.low if p is not None else math.nan for p in points], float)
                high = np.array([p.high if p is not None else math.nan for p in points], float)
                # clipped at 0: a mean outside its interval (inputs that disagree) still draws
                errors = np.vstack([np.where(np.isfinite(low), np.maximum(values - low, 0.0), 0.0),
                                    np.where(np.isfinite(high), np.maximum(high - values, 0.0), 0.0)])
                ax.errorbar(x + shift, values, yerr=errors, color=restorer_colour(restorer), marker="o", ms=3,
                            linewidth=1.3, capsize=2, label=restorer[:24])
            ax.set_xticks(x, [preset[:12] for preset in presets])
            ax.set_title(name[:40])
        axes[0].legend(loc="best")
        return figure_uri(figure)
