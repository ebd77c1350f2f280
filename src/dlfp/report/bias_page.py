"""reports/bias.html: who the restorer serves worse, from the bias stage's data/bias/bias.json.

Sections: how groups were made (and which illumination correction, and why), the dataset composition, the
largest gaps (intervals that re-pick worst and best, Holm p over groupings), the no-colour and colour-lost
counts, the tone shift per group, per-group tables with confidence intervals, forest plots, dITA
against GT ITA, the band flip heatmaps, failure rates, the baseline control, and sample and worst faces.

Plots are matplotlib PNGs embedded as data URIs (the page is one file). Group names come from labels and
sample ids from file names: they reach the HTML only through jinja2's autoescaping and reach matplotlib with
math text off. Image files named in bias.json are read only when the path stays inside the bias folder.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure

from dlfp.layout import BIAS_JSON, DATA_FOLDERS, STATUS_OK
from dlfp.report import Page, PageContext, register
from dlfp.report.plots import CHART_RC, LINE_COLOURS, data_uri, restorer_colour
from dlfp.report.readers import contained

MAX_IMAGE_BYTES = 4 << 20            # a worst-case strip is ~10 kB; anything far larger is not ours
PLOT_DPI = 80
RC = CHART_RC
MAIN_GROUPING = "skin_tone"
TONE_CATEGORIES = ("very light", "light", "intermediate", "tan", "brown", "dark", "no colour", "not measured")
GROUPING_TITLES = {"skin_tone": "skin tone (ITA band)", "lightness": "lightness (L*)", "hue": "hue angle (h*)",
                   "gender": "gender (labels)", "age": "age (labels)"}
METRIC_TITLES = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS", "niqe": "NIQE",
                 "identity_distance": "identity distance", "identity_match": "identity match rate",
                 "landmark_nme": "landmark NME", "d_ita": "dITA (deg, + = lighter)", "abs_d_ita": "|dITA| (deg)",
                 "d_l_star": "dL*", "abs_d_l_star": "|dL*|", "delta_e": "CIEDE2000 dE"}
CORRECTION_WHY = {
    "both": "sclera white balance (against typical eye whites) and then the brightest skin clusters (Thong et "
            "al.). Plain ITA mixes lighting with skin: on the shared faces, shade and warm light put several "
            "light-skinned people into the 'dark' and 'brown' bands. The correction reads the best-lit skin under "
            "a neutral white, so it moves many faces lightwards (bands shift light), but in a montage of "
            "'dark' faces more of them really had dark skin (6 of 10 against 4 of 10 plain).",
    "sclera": "sclera white balance only: removes colour casts, keeps shade.",
    "brightest": "the brightest skin clusters only (Thong et al.): drops shade, keeps colour casts.",
    "none": "no correction: plain median ITA of the cheek and forehead mask; lighting and skin tone are mixed.",
}


@dataclass
class Cell:
    text: str
    title: str = ""
    flag: str = ""


@dataclass
class TableView:
    caption: str
    header: list[str]
    rows: list[list[Cell]]


@dataclass
class Strip:
    uri: str | None
    caption: list[str]


@dataclass
class GallerySection:
    title: str
    strips: list[Strip] = field(default_factory=list)


# -------------------------------------------------------------------------------------------- format
def fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1000 or (value != 0 and abs(value) < 0.01) \
            else f"{value:.{digits}f}"
    return str(value)


def fmt_ci(estimate: object, low: object, high: object) -> str:
    return f"{fmt(estimate)} [{fmt(low)}, {fmt(high)}]"


def fmt_p(value: object) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "–"
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return data_uri(buffer.getvalue(), "image/png")


def _short(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------- plots
def composition_plot(rows: Sequence[Mapping], bands: Sequence[str]) -> str | None:
    """Share of faces per skin-tone band and split, corrected (grouping) beside plain ITA."""
    splits = list(dict.fromkeys(r["split"] for r in rows))
    if not splits:
        return None
    with rc_context(RC):
        figure = Figure(figsize=(10, 3.2), dpi=PLOT_DPI)
        figure.subplots_adjust(left=0.06, right=0.99, bottom=0.3, top=0.88, wspace=0.15)
        axes = figure.subplots(1, 2, sharey=True)
        width = 0.8 / len(splits)
        for ax, grouping, title in zip(axes, ("skin_tone", "skin_tone_plain"),
                                       ("grouping ITA (with correction)", "plain ITA (no correction)"),
                                       strict=True):
            for number, split in enumerate(splits):
                share = {r["group"]: r["share"] or 0.0 for r in rows if r["split"] == split
                         and r["grouping"] == grouping}
                ax.bar(np.arange(len(bands)) + number * width, [share.get(b, 0.0) for b in bands], width,
                       label=split, color=LINE_COLOURS[number % len(LINE_COLOURS)])
            ax.set_xticks(np.arange(len(bands)) + 0.4 - width / 2, [_short(b, 14) for b in bands], rotation=25)
            ax.set_title(title)
        axes[0].set_ylabel("share of the split")
        axes[0].legend(fontsize=7)
        return _png(figure)


def forest_plot(rows: Sequence[Mapping], metric: str, restorers: Sequence[str],
                order: Sequence[tuple[str, str]]) -> str | None:
    """Mean and CI per (grouping, group), one marker per restorer: every group on one axis."""
    chosen = {(r["grouping"], r["group"], r["restorer"]): r for r in rows
              if r["metric"] == metric and r["statistic"] == "mean"}
    if not chosen:
        return None
    with rc_context(RC):
        height = 0.8 + 0.22 * len(order) * max(1, len(restorers)) ** 0.5
        figure = Figure(figsize=(6.5, height), dpi=PLOT_DPI)
        figure.subplots_adjust(left=0.38, right=0.97, bottom=0.5 / height + 0.02, top=1 - 0.35 / height)
        ax = figure.subplots()
        offsets = np.linspace(-0.25, 0.25, len(restorers)) if len(restorers) > 1 else [0.0]
        for restorer, offset in zip(restorers, offsets, strict=False):
            colour = restorer_colour(restorer)
            ys, xs, lows, highs = [], [], [], []
            for position, (grouping, group) in enumerate(order):
                row = chosen.get((grouping, group, restorer))
                if row is None or row["estimate"] is None:
                    continue
                ys.append(position + offset)
                xs.append(row["estimate"])
                lows.append(row["estimate"] - (row["ci_low"] if row["ci_low"] is not None else row["estimate"]))
                highs.append((row["ci_high"] if row["ci_high"] is not None else row["estimate"]) - row["estimate"])
            ax.errorbar(xs, ys, xerr=[lows, highs], fmt="o", ms=3, capsize=2, color=colour, label=restorer)
        ax.set_yticks(range(len(order)), [_short(f"{GROUPING_TITLES.get(g, g).split(' (')[0]}: {name}", 40)
                                          for g, name in order])
        ax.invert_yaxis()
        if metric in ("d_ita", "d_l_star"):
            ax.axvline(0, color="#999999", lw=0.8)
        ax.set_title(f"{METRIC_TITLES.get(metric, metric)}: mean and 95% CI per group")
        ax.legend(fontsize=7, loc="best")
        ax.grid(axis="x", alpha=0.3)
        return _png(figure)


def shift_plot(scatter: Mapping[str, Sequence], binned: Sequence[Mapping], restorers: Sequence[str],
               edges: Sequence[float]) -> str | None:
    """dITA against GT ITA per restorer, with binned means (95% CI), the band edges and a zero line."""
    shown = [r for r in restorers if scatter.get(r)]
    if not shown:
        return None
    with rc_context(RC):
        figure = Figure(figsize=(3.4 * len(shown), 3.2), dpi=PLOT_DPI)
        figure.subplots_adjust(left=0.08, right=0.99, bottom=0.16, top=0.88, wspace=0.25)
        axes = np.atleast_1d(figure.subplots(1, len(shown), sharey=True))
        for ax, restorer in zip(axes, shown, strict=False):
            colour = restorer_colour(restorer)
            points = np.asarray(scatter[restorer], dtype=np.float64)
            ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.5, color=colour)
            bins = [b for b in binned if b["restorer"] == restorer and b["mean"] is not None]
            if bins:
                centres = np.array([b["centre"] for b in bins])
                means = np.array([b["mean"] for b in bins])
                low = np.array([b["low"] if b["low"] is not None else b["mean"] for b in bins])
                high = np.array([b["high"] if b["high"] is not None else b["mean"] for b in bins])
                ax.errorbar(centres, means, yerr=[means - low, high - means], fmt="s-", color="black", ms=3,
                            capsize=2, lw=1, label="binned mean")
            ax.axhline(0, color="#999999", lw=0.8)
            for edge in (-30, 10, 28, 41, 55):
                ax.axvline(edge, color="#dddddd", lw=0.6)
            ax.set_xlim(min(edges), max(edges))
            ax.set_title(restorer)
            ax.set_xlabel("GT ITA (deg)")
        axes[0].set_ylabel("dITA restored - GT (deg)")
        return _png(figure)


def flip_heatmap(flips: Sequence[Mapping], restorer: str, bands: Sequence[str]) -> str | None:
    counts = np.zeros((len(bands), len(bands)), dtype=int)
    index = {band: position for position, band in enumerate(bands)}
    for row in flips:
        if row["restorer"] == restorer and row["gt_band"] in index and row["restored_band"] in index:
            counts[index[row["gt_band"]], index[row["restored_band"]]] += int(row["count"])
    if counts.sum() == 0:
        return None
    with rc_context(RC):
        figure = Figure(figsize=(4.2, 3.8), dpi=PLOT_DPI)
        figure.subplots_adjust(left=0.3, right=0.98, bottom=0.3, top=0.9)
        ax = figure.subplots()
        ax.imshow(counts, cmap="Blues")
        for (i, j), value in np.ndenumerate(counts):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                        color="white" if value > counts.max() / 2 else "black")
        ax.set_xticks(range(len(bands)), bands, rotation=40, ha="right")
        ax.set_yticks(range(len(bands)), bands)
        ax.set_xlabel("restored band")
        ax.set_ylabel("GT band")
        ax.set_title(f"{_short(restorer)}: band flips")
        return _png(figure)


# ------------------------------------------------------------------------------------------- tables
def group_table(rows: Sequence[Mapping], grouping: str, restorers: Sequence[str], metrics: Sequence[str],
                group_info: Mapping[str, Mapping]) -> TableView:
    """Rows: group x metric; columns: one per restorer with mean [CI] (n)."""
    by_key = {(r["group"], r["metric"], r["restorer"], r["statistic"]): r for r in rows if r["grouping"] == grouping}
    table_rows = []
    for group, info in group_info.items():
        flag = ", ".join(word for word, on in (("merged", info.get("merged")), ("too small", info.get("too_small")),
                                               ("not compared", not info.get("compared", True))) if on)
        for metric in metrics:
            for statistic in ("mean", "median"):
                cells = [by_key.get((group, metric, restorer, statistic)) for restorer in restorers]
                if not any(cells):
                    continue
                line = [Cell(group, flag=flag), Cell(f"{METRIC_TITLES.get(metric, metric)} ({statistic})")]
                line += [Cell(f"{fmt_ci(c['estimate'], c['ci_low'], c['ci_high'])} (n {c['n']})") if c else Cell("–")
                         for c in cells]
                table_rows.append(line)
    return TableView(GROUPING_TITLES.get(grouping, grouping), ["group", "metric", *restorers], table_rows)


def gap_table(gaps: Sequence[Mapping], groupings: Sequence[str], alpha: float) -> TableView:
    rows = []
    for gap in gaps:
        if gap["grouping"] not in groupings:
            continue
        head = [Cell(gap["preset"]), Cell(gap["restorer"]), Cell(GROUPING_TITLES.get(gap["grouping"], gap["grouping"])),
                Cell(METRIC_TITLES.get(gap["metric"], gap["metric"]))]
        if gap["status"] != STATUS_OK:
            rows.append([*head, Cell(gap["status"], flag="not computed"), Cell(""), Cell(""), Cell("")])
            continue
        direction = "higher is better" if gap["higher_is_better"] else "lower is better"
        p_holm = gap.get("p_holm")
        significant = isinstance(p_holm, int | float) and p_holm < alpha
        rows.append([*head, Cell(str(gap["worst"])), Cell(str(gap["best"])),
                     Cell(fmt_ci(gap["gap"], gap["gap_low"], gap["gap_high"]), title=direction),
                     Cell(fmt_ci(gap["ratio"], gap["ratio_low"], gap["ratio_high"])), Cell(fmt_p(gap.get("p"))),
                     Cell(fmt_p(p_holm), title=f"Holm over {gap.get('family_size', '?')} groupings",
                          flag="gap" if significant else "")])
    return TableView("worst - best", ["preset", "restorer", "grouping", "metric", "worst group", "best group",
                                      "gap worst - best [CI, worst/best re-picked]", "ratio worst / best [CI]",
                                      "permutation p", "p (Holm over groupings)"], rows)


def tone_table(tone: Sequence[Mapping], grouping: str) -> TableView:
    rows = [[Cell(t["preset"]), Cell(t["restorer"]), Cell(str(t["group"])), Cell(fmt(t["n"])),
             Cell(fmt_ci(t["median_d_ita"], t["ci_low"], t["ci_high"])), Cell(fmt(t["share_lightened"])),
             Cell(fmt_p(t["sign_p_holm"])), Cell(fmt_p(t["wilcoxon_p_holm"])), Cell(str(t["verdict"])),
             Cell(fmt(t.get("flagged")))]
            for t in tone if t["grouping"] == grouping]
    return TableView(GROUPING_TITLES.get(grouping, grouping),
                     ["preset", "restorer", "group", "n with dITA", "median dITA [CI]", "share lightened",
                      "sign test p (Holm)", "Wilcoxon p (Holm)", "verdict", "flagged (Holm p < 0.05, CI excl. 0)"],
                     rows)


def colour_lost_table(rows: Sequence[Mapping], preset: str, grouping: str) -> TableView:
    """Per restorer and GT group: restored faces that lost the GT's colour (no dITA for them), Wilson CI."""
    body = [[Cell(r["restorer"]), Cell(str(r["group"])), Cell(fmt(r["n"])), Cell(fmt(r["n_colour_lost"])),
             Cell(fmt_ci(r["rate"], r["rate_low"], r["rate_high"]))]
            for r in rows if r["preset"] == preset and r["grouping"] == grouping]
    return TableView(GROUPING_TITLES.get(grouping, grouping),
                     ["restorer", "GT group", "GT faces with colour", "colour lost", "rate [Wilson CI]"], body)


def failure_table(failures: Sequence[Mapping], preset: str, grouping: str) -> TableView:
    rows = [[Cell(f["restorer"]), Cell(str(f["group"])), Cell(fmt(f["n"])), Cell(fmt(f["n_failed"])),
             Cell(fmt_ci(f["rate"], f["rate_low"], f["rate_high"]))]
            for f in failures if f["preset"] == preset and f["grouping"] == grouping]
    return TableView(GROUPING_TITLES.get(grouping, grouping),
                     ["restorer", "group", "n", "no landmarks found", "failure rate [Wilson CI]"], rows)


def baseline_table(rows: Sequence[Mapping], preset: str, grouping: str) -> TableView:
    out = [[Cell(r["restorer"]), Cell(str(r["group"])), Cell(METRIC_TITLES.get(r["metric"], r["metric"])),
            Cell(f"{fmt_ci(r['estimate'], r['ci_low'], r['ci_high'])} (n {r['n']})")]
           for r in rows if r["preset"] == preset and r["grouping"] == grouping]
    baseline = rows[0]["baseline"] if rows else "baseline"
    return TableView(f"model - {baseline}, paired per face", ["restorer", "group", "metric", "mean difference [CI]"],
                     out)


def composition_table(rows: Sequence[Mapping], grouping: str) -> TableView:
    splits = list(dict.fromkeys(r["split"] for r in rows))
    groups = list(dict.fromkeys(r["group"] for r in rows if r["grouping"] == grouping))
    lookup = {(r["split"], r["group"]): r for r in rows if r["grouping"] == grouping}
    body = []
    for group in groups:
        line = [Cell(str(group))]
        for split in splits:
            row = lookup.get((split, group))
            line.append(Cell(f"{row['count']} ({fmt(row['share'] * 100 if row['share'] is not None else None, 1)}%)"
                             if row else "–"))
        body.append(line)
    return TableView(grouping, ["group", *splits], body)


# ------------------------------------------------------------------------------------------ images
def _image(folder: Path, relative: object) -> str | None:
    path = contained(folder, str(relative)) if isinstance(relative, str) else None
    if path is None or not path.is_file() or path.stat().st_size > MAX_IMAGE_BYTES:
        return None
    return data_uri(path.read_bytes(), "image/jpeg")


def galleries(folder: Path, worst: Sequence[Mapping], preset: str, restorers: Sequence[str]) -> list[GallerySection]:
    sections = []
    for restorer in restorers:
        entries = [w for w in worst if w["preset"] == preset and w["restorer"] == restorer]
        for group in dict.fromkeys(w["group"] for w in entries):
            section = GallerySection(f"{restorer}, {group}")
            for entry in sorted((w for w in entries if w["group"] == group), key=lambda w: w["rank"]):
                section.strips.append(Strip(_image(folder, entry.get("file")),
                                            [str(entry["id"]), f"dITA {fmt(entry['d_ita'])} deg"]))
            sections.append(section)
    return sections


# --------------------------------------------------------------------------------------------- page
def _load(folder: Path) -> tuple[dict | None, str | None]:
    path = folder / BIAS_JSON
    if not path.is_file():
        return None, None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return None, f"{path.name}: unreadable ({error})"
    if not isinstance(document, dict) or "presets" not in document:
        return None, f"{path.name}: not a bias stage result"
    return document, None


def render(ctx: PageContext) -> str:
    folder = ctx.data_dir / DATA_FOLDERS["bias"]
    document, error = _load(folder)
    if document is None:
        return ctx.render("bias.html", current="bias.html", title="Bias: who is restored worse",
                          ran=False, error=error, folder=str(folder))
    presets, restorers = document["presets"], document["restorers"]
    preset = ctx.params.evaluate.headline_preset if ctx.params.evaluate.headline_preset in presets else presets[0]
    method = document["method"]
    group_info = {grouping: {str(info["group"]): info for info in groups}
                  for grouping, groups in document["group_info"].items()}
    bands = list(TONE_CATEGORIES)
    groups_here = [r for r in document["groups"] if r["preset"] == preset]
    metrics = [m["metric"] for m in method["metrics"] if any(r["metric"] == m["metric"] for r in groups_here)]
    order = [(grouping, group) for grouping in document["groupings"] for group in group_info[grouping]]
    forests = [(METRIC_TITLES.get(m, m), forest_plot(groups_here, m, restorers, order)) for m in metrics]
    examples = [Strip(_image(folder, e.get("file")), [str(e["id"]), f"{e['band']} (plain: {e['band_plain']})",
                                                      f"ITA {fmt(e['ita'])} deg, {e['correction_applied']}"])
                for e in document.get("examples", [])]
    return ctx.render(
        "bias.html", current="bias.html", title="Bias: who is restored worse", ran=True, error=None,
        folder=str(folder), preset=preset, presets=presets, restorers=restorers, method=method,
        correction_why=CORRECTION_WHY.get(method["correction"], ""),
        group_info=[(GROUPING_TITLES.get(g, g), [(name, info) for name, info in group_info[g].items()])
                    for g in document["groupings"]],
        composition_plot=composition_plot(document["composition"], bands),
        composition_tables=[composition_table(document["composition"], g)
                            for g in ("skin_tone", "skin_tone_plain", "gender", "age")],
        gaps_main=gap_table(document["gaps"], [MAIN_GROUPING], 1 - method["confidence"]),
        gaps_other=gap_table(document["gaps"], [g for g in document["groupings"] if g != MAIN_GROUPING],
                             1 - method["confidence"]),
        tone_main=tone_table(document["tone_shift"], MAIN_GROUPING),
        tone_other=[tone_table(document["tone_shift"], g) for g in document["groupings"] if g != MAIN_GROUPING],
        group_tables=[group_table(groups_here, g, restorers, metrics, group_info[g]) for g in document["groupings"]],
        forests=forests,
        shift_plot=shift_plot(document["scatter"].get(preset, {}),
                              [b for b in document["binned"] if b["preset"] == preset], restorers,
                              method["ita_bin_edges"]),
        flips=[(restorer, flip_heatmap([f for f in document["flips"] if f["preset"] == preset], restorer, bands))
               for restorer in restorers],
        failures=failure_table(document["failures"], preset, MAIN_GROUPING),
        colour=document.get("colour", {}),
        colour_lost=colour_lost_table(document.get("colour_lost", []), preset, MAIN_GROUPING),
        baseline=baseline_table(document["baseline"], preset, MAIN_GROUPING),
        examples=examples, galleries=galleries(folder, document.get("worst", []), preset, restorers),
        not_computed=sorted(document.get("not_computed", {}).items()),
        not_measured=sorted(document.get("not_measured", {}).items()),
    )


PAGE = register(Page(slug="bias", title="Bias", filename="bias.html", stages=("bias",), render=render))
