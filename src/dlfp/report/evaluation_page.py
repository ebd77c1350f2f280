"""reports/evaluation.html: how well each restorer did on each severity preset, next to the paper's numbers.

Inputs, all stage outputs: data/evaluation (summary.json, per_image.csv, receipt.json, and what the evaluate
stage writes for this page: gallery.json, worst_cases.json, timing.json and the JPEGs under images/;
reports/metrics.json as a fallback for the results), data/restored (index.json with every restorer's status) and
data/pairs (index.json: presets params.yaml does not list). First screen, "at a glance": the headline accuracy
(rank-1 identification with its CI, and whether the scored model was trained with the scoring network), one table
preset x restorer with PSNR, SSIM and rank-1 and their 95% intervals (PSNR/SSIM: t-intervals over per_image.csv,
model_card.mean_intervals), with each restorer's paired difference from the LQ input and from bicubic and whether
it is above, below or level with each (evaluation_glance.py), the paper's CelebA-Test rows beside
preset `paper` only, and a chart of the three against severity (one line per restorer). Then the gallery with an
LQ / restored / GT toggle (CSS only: the pages allow no scripts). The details follow, collapsed: the accuracy's
definition, verification rates and calibration (FAR of 0.6, a histogram of impostor distances with both
thresholds), rank-1 and match rates per preset and restorer, the restorers (with the reason for any that was not
run), one metrics table per preset (evaluation_tables.py: a missing metric is said once, "n/c" in its cells), the
worst faces by identity distance, the metric settings and the receipt.

The gallery and worst-case JPEGs are copied from the evaluate stage's images/ to reports/evaluation/; the page
decodes no image and reads no tar.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dlfp.io.atomic import staged_output
from dlfp.layout import (
    DATA_FOLDERS,
    INDEX_NAME,
    LQ_RESTORER,
    METRICS_JSON,
    NOT_COMPUTED,
    PER_IMAGE_NAME,
    RECEIPT_NAME,
    STATUS_OK,
    SUMMARY_NAME,
)
from dlfp.report import Page, PageContext, register
from dlfp.report.evaluation_glance import (
    BASELINES,
    GLANCE_METRICS,
    SHORT_LABELS,
    glance,
    glance_chart,
    severity_order,
)
from dlfp.report.evaluation_tables import (
    ARROWS,
    PAPER_SIZE,
    PAPER_TEST_COUNT,
    PAPER_TEST_SET,
    as_mapping,
    format_value,
    interval_text,
    is_number,
    missing_notes,
    ordered,
    preset_table,
)
from dlfp.report.model_card import mean_intervals
from dlfp.report.plots import distance_histogram
from dlfp.report.readers import contained, read_json, receipt_view, split_presets
from dlfp.shards.format import TEST_SPLIT

ASSETS_DIR = "evaluation"  # under the reports folder: gallery and worst-case images
IMAGES_DIR = "images"  # under the evaluate stage's output: the same images
ASSET_NAME = re.compile(r"[a-z0-9-]+\.jpg")  # the stage names its JPEGs by positions only
GALLERY_PX = 256  # the page's layout width when gallery.json does not give the images' size
METRICS_JSON_EXTRAS = ("split", "accuracy", "calibration", "colour_space")  # metrics.json keys that are not presets


@dataclass
class RestorerView:
    name: str
    status: str
    description: str
    reason: str
    seconds: str | None  # mean per image over every preset


@dataclass
class View:
    label: str
    uri: str | None
    caption: list[str]


@dataclass
class Face:
    sample_id: str
    views: list[View]


@dataclass
class GalleryPreset:
    preset: str
    faces: list[Face]
    errors: list[str] = field(default_factory=list)


@dataclass
class WorstCase:
    preset: str
    sample_id: str
    distance: float
    match: str
    psnr: str
    thumbs: list[View]



@dataclass
class Inputs:
    """Everything the page reads, with per-part errors instead of exceptions."""

    pairs_dir: Path
    restored_dir: Path
    evaluation_dir: Path
    metrics_path: Path
    pairs_index: Mapping | None = None
    restored_index: Mapping | None = None
    summary: Mapping | None = None
    results_source: str | None = None
    per_image: list[dict] = field(default_factory=list)
    receipt: dict | None = None
    gallery: Mapping | None = None  # gallery.json
    worst: Mapping | None = None  # worst_cases.json
    timing: Mapping | None = None  # timing.json
    errors: list[str] = field(default_factory=list)



def read_per_image(path: Path, errors: list[str]) -> list[dict]:
    if not path.exists():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        errors.append(f"{path.name}: unreadable ({error})")
        return []


def read_inputs(ctx: PageContext) -> Inputs:
    inputs = Inputs(*(ctx.data_dir / DATA_FOLDERS[stage] for stage in ("degrade", "restore", "evaluate")),
                    ctx.out_dir / METRICS_JSON)
    errors = inputs.errors
    pairs = read_json(inputs.pairs_dir / INDEX_NAME, errors)
    inputs.pairs_index = pairs if isinstance(pairs, Mapping) else None
    restored = read_json(inputs.restored_dir / INDEX_NAME, errors)
    inputs.restored_index = restored if isinstance(restored, Mapping) else None
    summary = read_json(inputs.evaluation_dir / SUMMARY_NAME, errors)
    if isinstance(summary, Mapping) and isinstance(summary.get("results"), Mapping):
        inputs.summary, inputs.results_source = summary, str(inputs.evaluation_dir / SUMMARY_NAME)
    else:
        metrics = read_json(inputs.metrics_path, errors)  # {preset: {restorer: ...}, "accuracy": ...}
        if isinstance(metrics, Mapping):
            results = {key: value for key, value in metrics.items() if key not in METRICS_JSON_EXTRAS}
            inputs.summary = {"results": results, "accuracy": metrics.get("accuracy")}
            inputs.results_source = str(inputs.metrics_path)
    inputs.per_image = read_per_image(inputs.evaluation_dir / PER_IMAGE_NAME, errors)
    receipt = read_json(inputs.evaluation_dir / RECEIPT_NAME, errors)
    inputs.receipt = receipt if isinstance(receipt, dict) else None
    for name, attribute in (("gallery.json", "gallery"), ("worst_cases.json", "worst"), ("timing.json", "timing")):
        document = read_json(inputs.evaluation_dir / name, errors)
        setattr(inputs, attribute, document if isinstance(document, Mapping) else None)
    return inputs




# ------------------------------------------------------------------------------------------------ sections
def _description(value: object) -> str:
    """The restore index's description (a dict of settings) as readable text."""
    if isinstance(value, Mapping):
        return "; ".join(f"{key}: {item if isinstance(item, str) else json.dumps(item, default=str)}"
                         for key, item in value.items())
    return "" if value is None else str(value)


def restorer_views(inputs: Inputs) -> list[RestorerView]:
    entries = as_mapping(as_mapping(inputs.restored_index).get("restorers"))
    timings = as_mapping(as_mapping(inputs.timing).get("seconds_per_image"))
    views = []
    for name, entry in entries.items():
        entry = as_mapping(entry)
        seconds = timings.get(str(name))
        seconds = float(seconds) if is_number(seconds) else None
        views.append(RestorerView(str(name), str(entry.get("status", "unknown")),
                                  _description(entry.get("description")), str(entry.get("reason") or ""),
                                  f"{seconds:.4f}" if seconds is not None else None))
    return views


def not_run_reasons(inputs: Inputs) -> dict[str, str]:
    """{restorer: reason} from the evaluation summary, else from the restore index."""
    reasons = {str(k): str(v) for k, v in as_mapping(as_mapping(inputs.summary).get("not_run")).items()}
    for name, entry in as_mapping(as_mapping(inputs.restored_index).get("restorers")).items():
        entry = as_mapping(entry)
        if entry.get("status") not in (None, STATUS_OK) and str(name) not in reasons:
            reasons[str(name)] = f"{entry.get('status')}: {entry.get('reason', 'no reason recorded')}"
    return reasons


# ---------------------------------------------------------------------------------------------- images
def _copy_asset(inputs: Inputs, name: object, assets: Path) -> str | None:
    """Copy one of the evaluate stage's JPEGs into the page's assets; its page-relative address, or None."""
    if not isinstance(name, str) or not ASSET_NAME.fullmatch(name):
        return None
    source = contained(inputs.evaluation_dir / IMAGES_DIR, name)
    if source is None or not source.is_file():
        inputs.errors.append(f"{IMAGES_DIR}/{name}: missing from {inputs.evaluation_dir}")
        return None
    shutil.copyfile(source, assets / name)
    return f"{ASSETS_DIR}/{name}"


def _views(inputs: Inputs, views: object, assets: Path) -> list[View]:
    shown = []
    for view in views if isinstance(views, list) else []:
        view = as_mapping(view)
        uri = _copy_asset(inputs, view.get("file"), assets)
        caption = [str(line) for line in view.get("caption") or [] if isinstance(line, str)]
        shown.append(View(str(view.get("label", "?")), uri, caption if uri else ["image missing or unreadable",
                                                                                   *caption]))
    return shown


def gallery(inputs: Inputs, assets: Path) -> list[GalleryPreset]:
    """The evaluate stage's gallery (gallery.json): per preset, each face's LQ, restored and GT views."""
    presets = []
    for entry in as_mapping(inputs.gallery).get("presets") or []:
        entry = as_mapping(entry)
        faces = [Face(str(as_mapping(face).get("id", "?")), _views(inputs, as_mapping(face).get("views"), assets))
                 for face in entry.get("faces") or []]
        presets.append(GalleryPreset(str(entry.get("preset", "?")), faces))
    return presets


def worst_cases(inputs: Inputs, assets: Path) -> dict[str, list[WorstCase]]:
    """The evaluate stage's worst faces by identity distance (worst_cases.json), with their thumbnails."""
    result: dict[str, list[WorstCase]] = {}
    for entry in as_mapping(inputs.worst).get("restorers") or []:
        entry = as_mapping(entry)
        cases = []
        for case in entry.get("cases") or []:
            case = as_mapping(case)
            distance, psnr = case.get("identity_distance"), case.get("psnr")
            if not is_number(distance):
                continue
            cases.append(WorstCase(str(case.get("preset", "?")), str(case.get("id", "?")), float(distance),
                                   "yes" if case.get("identity_match") is True else "no",
                                   f"{float(psnr):.2f}" if is_number(psnr) else NOT_COMPUTED,
                                   [View(view.label, view.uri, []) for view in
                                    _views(inputs, case.get("views"), assets)]))
        result[str(entry.get("restorer", "?"))] = cases
    return result


def _figure(entry: Mapping, key: str) -> str:
    """A rate with its interval, or the reason it is missing."""
    value = entry.get(key)
    if is_number(value):
        return format_value(float(value)) + interval_text(entry, key)
    return str(value) if value is not None else f"{NOT_COMPUTED}: not in the evaluation output"


@dataclass
class AccuracyRow:
    preset: str
    restorer: str
    faces: str
    rank1: str
    match: str
    match_at_far: str
    circularity: str


def accuracy_rows(results: Mapping, preset_order: Mapping[str, int], restorer_order: list[str]) -> list[AccuracyRow]:
    """Rank-1 and both match rates of every (preset, restorer) that ran, with the circularity verdict."""
    rows = []
    for preset in sorted(results, key=lambda name: preset_order.get(str(name), len(preset_order))):
        for restorer, entry in ordered(as_mapping(results[preset]), restorer_order).items():
            entry = as_mapping(entry)
            if entry.get("status") == "not run":
                continue
            rows.append(AccuracyRow(str(preset), str(restorer), str(entry.get("count", "?")),
                                    _figure(entry, "rank1_accuracy"), _figure(entry, "identity_match_rate"),
                                    _figure(entry, "identity_match_rate_at_far"),
                                    str(entry.get("identity_metric_circularity", "unknown: not recorded"))))
    return rows


def _accuracy(summary: Mapping | None) -> dict | None:
    accuracy = as_mapping(as_mapping(summary).get("accuracy"))
    if not accuracy:
        return None
    value = accuracy.get("value")
    low, high = accuracy.get("ci_low"), accuracy.get("ci_high")
    circularity = str(accuracy.get("identity_metric_circularity", "unknown: not recorded"))
    return {"definition": str(accuracy.get("definition", "")), "restorer": str(accuracy.get("restorer", "?")),
            "preset": str(accuracy.get("preset", "?")), "target": accuracy.get("target"),
            "value": format_value(value) if is_number(value) else str(value),
            "ci": f"[{low:.3f}, {high:.3f}]" if is_number(low) and is_number(high) else None,
            "n": accuracy.get("n"), "computed": is_number(value), "meets_target": accuracy.get("meets_target"),
            "circularity": circularity, "circular": circularity.startswith("yes"),
            "match": _figure(as_mapping(accuracy.get("verification")), "identity_match_rate"),
            "match_at_far": _figure(as_mapping(accuracy.get("verification")), "identity_match_rate_at_far")}




@dataclass
class CalibrationView:
    preset: str
    threshold: str
    far_at_threshold: str
    far_target: str
    threshold_at_far: str
    impostor_pairs: str
    identities: str
    resolvable: bool
    note: str
    plot: str | None
    error: str | None = None


def _ci(entry: Mapping, key: str, digits: int) -> str:
    value, low, high = entry.get(key), entry.get(f"{key}_ci_low"), entry.get(f"{key}_ci_high")
    if not is_number(value):
        return str(value)
    text = f"{value:.{digits}f}"
    return text + (f" [{low:.{digits}f}, {high:.{digits}f}]" if is_number(low) and is_number(high) else "")


def calibration_view(summary: Mapping | None, per_image: list[dict]) -> CalibrationView | None:
    """The headline preset's calibration: figures, and the impostor histogram with the headline restorer's own
    restored-vs-GT distances and both thresholds."""
    accuracy = as_mapping(as_mapping(summary).get("accuracy"))
    if not accuracy:
        return None
    preset, restorer = str(accuracy.get("preset", "?")), str(accuracy.get("restorer", "?"))
    entry = accuracy.get("calibration")
    if not isinstance(entry, Mapping):
        return CalibrationView(preset, "", "", "", "", "", "", False, "", None,
                               str(entry) if entry is not None else f"{NOT_COMPUTED}: no calibration recorded")
    histogram = as_mapping(as_mapping(as_mapping(summary).get("impostor_histograms")).get(preset))
    threshold, at_far = entry.get("threshold"), entry.get("threshold_at_far_target")
    genuine = []
    for row in per_image:
        if row.get("preset") == preset and row.get("restorer") == restorer:
            try:
                genuine.append(float(row.get("identity_distance") or "nan"))
            except ValueError:
                continue
    lines = [(f"dlib threshold (FAR {entry.get('far_at_threshold', float('nan')):.4f})", threshold),
             (f"threshold at FAR {entry.get('far_target')}", at_far)]
    plot = distance_histogram(histogram.get("edges") or [], histogram.get("counts") or [],
                              [(label, float(value)) for label, value in lines if is_number(value)],
                              f"Impostor distances, test GT faces of preset {preset}", genuine,
                              f"{restorer}: restored vs own GT")
    return CalibrationView(preset, str(threshold), _ci(entry, "far_at_threshold", 4), str(entry.get("far_target")),
                           _ci(entry, "threshold_at_far_target", 3), str(entry.get("impostor_pairs")),
                           str(entry.get("identities")), entry.get("far_target_resolvable") is True,
                           str(entry.get("note", "")), plot)


def _settings(summary: Mapping | None) -> list[tuple[str, str]]:
    return [(str(name), json.dumps(value, sort_keys=True, ensure_ascii=False, default=str))
            for name, value in as_mapping(as_mapping(summary).get("metrics")).items()]


def _gallery_px(document: Mapping | None) -> int:
    side = as_mapping(document).get("image_px")
    return side if isinstance(side, int) and not isinstance(side, bool) and 0 < side <= 4096 else GALLERY_PX


def render(ctx: PageContext) -> str:
    """Gather the restore and evaluate outputs, copy the gallery images, and render evaluation.html."""
    inputs = read_inputs(ctx)
    not_run = not_run_reasons(inputs)
    results = as_mapping(as_mapping(inputs.summary).get("results"))
    # JSON is written with sorted keys: show presets by severity, and the LQ baseline first, then the restorers in
    # the configured order
    preset_order = {name: i for i, name in enumerate(severity_order(ctx.params.degrade.presets,
                                                                      split_presets(inputs.pairs_index, TEST_SPLIT)))}
    restorer_order = [LQ_RESTORER, *ctx.params.restore.restorers]
    if inputs.restored_index is not None:
        entries = ordered(as_mapping(inputs.restored_index.get("restorers")), restorer_order)
        inputs.restored_index = {**inputs.restored_index, "restorers": entries}
    presets = [str(preset) for preset in sorted(results, key=lambda name: preset_order.get(str(name),
                                                                                          len(preset_order)))]
    tables = [preset_table(preset, ordered(as_mapping(results[preset]), restorer_order), not_run,
                           ctx.params.data.size)
              for preset in presets]
    intervals = mean_intervals(inputs.evaluation_dir / "per_image.csv", []) if results else {}
    glance_rows, glance_points = glance(results, presets, restorer_order, intervals, inputs.per_image)
    with staged_output(ctx.out_dir / ASSETS_DIR) as assets:
        shown = gallery(inputs, assets)
        worst = worst_cases(inputs, assets)
    receipt = receipt_view(inputs.receipt)
    return ctx.render(
        "evaluation.html", current=PAGE.filename, title=PAGE.title,
        errors=inputs.errors, labels={"degrade": str(inputs.pairs_dir), "restore": str(inputs.restored_dir),
                                      "evaluate": str(inputs.evaluation_dir)},
        ran={"degrade": inputs.pairs_dir.is_dir(), "restore": inputs.restored_dir.is_dir(),
             "evaluate": inputs.summary is not None},
        results_source=inputs.results_source, accuracy=_accuracy(inputs.summary),
        accuracy_rows=accuracy_rows(results, preset_order, restorer_order),
        calibration=calibration_view(inputs.summary, inputs.per_image),
        restorers=restorer_views(inputs), not_run=not_run, tables=tables, arrows=ARROWS,
        gallery=shown, max_views=max((len(f.views) for p in shown for f in p.faces), default=0),
        glance_rows=glance_rows, glance_chart=glance_chart(glance_points, presets) if glance_rows else None,
        glance_labels=[SHORT_LABELS[key] for key in GLANCE_METRICS], missing_notes=missing_notes(tables),
        baselines=[label for name, label, _ in BASELINES
                   if name == LQ_RESTORER or any(name in as_mapping(results[preset]) for preset in presets)],
        lq_restorer=LQ_RESTORER, has_per_image=bool(inputs.per_image),
        worst=worst, worst_per_restorer=as_mapping(inputs.worst).get("per_restorer", "?"),
        settings=_settings(inputs.summary),
        receipt=receipt, paper_test_set=PAPER_TEST_SET, paper_count=PAPER_TEST_COUNT, paper_size=PAPER_SIZE,
        size=ctx.params.data.size,
        per_image_rows=len(inputs.per_image), gallery_px=_gallery_px(inputs.gallery),
        jpeg_quality=as_mapping(inputs.gallery).get("jpeg_quality", "?"),
        metrics_path=str(inputs.metrics_path),
    )


PAGE = register(Page(slug="evaluation", title="Evaluation", filename="evaluation.html",
                     stages=("restore", "evaluate"), render=render))
