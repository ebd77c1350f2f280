"""reports/training.html: how the two training stages went, from their output folders under models/.

Per stage (train_prior -> models/prior, train -> models/gfpgan): loss curves from losses.csv (per step, with a
running mean), the prior's face measurement (prior_metrics.csv: HOG face-detection rate with its Wilson band and
dlib-descriptor FD, each beside its real-face level from prior_reference.json), the validation curves of the
GFP-GAN (restored vs LQ input: PSNR, identity match rate and distance), the sample grids over time, and
losses_active.json as a table that says which loss terms and which feature / identity networks were really used,
checked against the columns that losses.csv actually logged. Last, the prior ablation (prior_ablation.py): does
GFP-GAN do better on the trained prior than on a randomly initialised decoder?

The sample grids are copied (shrunk when wide) into reports/training/ under names made from the step number
only, so the page stays small and no file name from the inputs reaches a path. A stage that has not run, or
whose files are damaged, is reported on the page; the page itself always renders.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dlfp.io.atomic import staged_output
from dlfp.io.images import encode_jpeg
from dlfp.io.receipt import read_receipt
from dlfp.layout import MODEL_FOLDERS
from dlfp.report import Page, PageContext, register
from dlfp.report.plots import Reference, Series, decode_thumbnail, line_panels, moving_average
from dlfp.report.prior_ablation import ABLATION_METRICS, read_ablation
from dlfp.report.readers import Table, read_json, receipt_view

ASSETS_DIR = "training"  # under the reports folder: the sample grids
MAX_GRIDS_SHOWN = 8  # grids over time, evenly spaced from first to last
GRID_MAX_SIDE = 1024  # wider grids (paper scale: 8 x 512 px) are shrunk and stored as JPEG
GRID_JPEG_QUALITY = 90
SMOOTHING_POINTS = 50  # the running mean spans 1/50 of the logged steps
LAST_FRACTION = 0.05  # "last" in the loss table = mean over the last 5% of logged steps (at least one)
STEP_FILE = re.compile(r"^step-(\d{1,9})\.png$")
PRIOR_METRICS_CSV = "prior_metrics.csv"  # written by dlfp.train.prior_metrics (not imported: it needs torch)
PRIOR_REFERENCE_JSON = "prior_reference.json"
FACE_COLUMNS = ("detection_rate", "ci_low", "ci_high", "fd_dlib", "n_samples")
NOISE_OFF = "_noise_off"  # dlfp.train.prior_metrics.NOISE_OFF: the same figures with every noise input at zero
RATE_PANEL = "face-detection rate (dlib HOG), higher is better"
FD_PANEL = "FD in dlib descriptor space, lower is better"
PARTIAL_SUFFIX = ".partial"

# The published loss weights (gfpgan-spec section 4), shown beside the ones used.
PAPER_LOSS_WEIGHTS = {"pixel": 0.1, "pyramid": 1.0, "perceptual": 1.0, "perceptual_style": 50.0, "gan": 0.1,
                      "component_gan": 1.0, "component_style": 200.0, "identity": 10.0}
# losses_active.json term -> the losses.csv column that logs it (where the names differ).
PRIOR_TERM_COLUMNS = {"gan": "g_gan", "r1": "r1"}
VALIDATION_PANELS = (("PSNR (dB, RGB), higher is better", "psnr"),
                     ("identity match rate, higher is better", "identity_match"),
                     ("identity distance, lower is better", "identity_distance"))


@dataclass(frozen=True)
class TrainingStage:
    stage: str  # pipeline stage name
    folder_name: str  # under the models folder
    asset_prefix: str  # prefix of its copied sample grids
    grid_caption: str


STAGES = (
    TrainingStage("train_prior", MODEL_FOLDERS["train_prior"], "prior",
                  "samples of the EMA generator from fixed latents (fixed noise), two rows of eight"),
    TrainingStage("train", MODEL_FOLDERS["train"], "gfpgan",
                  "rows: LQ input / restored by the EMA generator / GT, the first eight validation pairs"),
)


@dataclass
class LossColumn:
    name: str
    logged: int  # steps with a value
    first: float | None
    last: float | None
    minimum: float | None
    maximum: float | None


@dataclass
class TermRow:
    term: str
    weight: object
    paper_weight: float | None
    network: object
    source: object
    note: str
    details: str
    logged: int | None  # steps with a value in losses.csv; None when the term has no column
    state: str  # "active", "off", or a warning


@dataclass
class Grid:
    step: int
    href: str | None
    width: int = 0
    height: int = 0
    problem: str | None = None
    note: str = ""  # the face measurement at this step, when there is one


@dataclass
class FaceView:
    """The prior's face measurement: curves, rows, and the real-face levels they are read against."""

    plot: str | None
    table: Table
    reference: dict[str, object]  # real_faces of prior_reference.json (may be empty)
    claim: str
    seconds: list[float]
    n_samples: int
    rows: dict[int, dict[str, float]] = field(default_factory=dict)  # by step, for the grid captions


@dataclass
class StageView:
    stage: str
    folder: str
    ran: bool
    partial: bool = False
    errors: list[str] = field(default_factory=list)
    receipt: dict | None = None
    mode: str | None = None
    loss_plot: str | None = None
    losses: list[LossColumn] = field(default_factory=list)
    logged_steps: int = 0
    validation_plot: str | None = None
    validation: Table | None = None
    faces: FaceView | None = None
    grids: list[Grid] = field(default_factory=list)
    grids_total: int = 0
    grid_caption: str = ""
    terms: list[TermRow] = field(default_factory=list)
    settings: list[tuple[str, str]] = field(default_factory=list)
    model_config: list[tuple[str, str]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ readers
def read_numeric_csv(path: Path, errors: list[str]) -> pd.DataFrame | None:
    """A log CSV with numeric columns (blank = not logged that step -> NaN); None when absent or unreadable."""
    if not path.exists():
        return None
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        errors.append(f"{path.name}: unreadable ({error})")
        return None
    if "step" not in frame.columns:
        errors.append(f"{path.name}: no 'step' column (got {', '.join(map(str, frame.columns)) or 'nothing'})")
        return None
    numeric = frame.apply(lambda column: pd.to_numeric(column.replace("", np.nan), errors="coerce"))
    bad_steps = int(numeric["step"].isna().sum())
    if bad_steps:
        errors.append(f"{path.name}: {bad_steps} row(s) without a numeric step were skipped")
    return numeric[numeric["step"].notna()].sort_values("step", kind="stable").reset_index(drop=True)


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def loss_columns(frame: pd.DataFrame) -> list[LossColumn]:
    """Per logged column: how many steps have a value, its first, last (tail mean), min and max."""
    columns = []
    for name in frame.columns:
        if name == "step":
            continue
        values = frame[name].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if not len(values):
            columns.append(LossColumn(str(name), 0, None, None, None, None))
            continue
        tail = values[-max(1, int(len(values) * LAST_FRACTION)):]
        columns.append(LossColumn(str(name), len(values), _finite(values[0]), _finite(tail.mean()),
                                  _finite(values.min()), _finite(values.max())))
    return columns


def loss_plot(frame: pd.DataFrame, stage: str) -> str | None:
    """One panel per logged column: the per-step values thin, their running mean bold."""
    steps = frame["step"].to_numpy(dtype=float)
    window = max(1, len(frame) // SMOOTHING_POINTS)
    panels = []
    for name in frame.columns:
        if name == "step":
            continue
        values = frame[name].to_numpy(dtype=float)
        keep = np.isfinite(values)
        lines = [Series("per step", steps[keep], values[keep], emphasis=window == 1)]
        if window > 1 and keep.sum() > window:
            lines.append(Series(f"running mean ({window} steps)", steps[keep], moving_average(values[keep], window)))
        panels.append((str(name), lines))
    return line_panels(panels, f"{stage}: losses.csv ({len(frame)} steps logged)", columns=4)


def validation_plot(frame: pd.DataFrame) -> str | None:
    """Restored vs LQ input on the fixed validation pairs, per validation step."""
    steps = frame["step"].to_numpy(dtype=float)
    panels = []
    for title, column in VALIDATION_PANELS:
        lines = [Series(label, steps, frame[name].to_numpy(dtype=float))
                 for label, name in (("restored (EMA)", column), ("LQ input", f"{column}_lq"))
                 if name in frame.columns]
        if lines:
            panels.append((title, lines))
    return line_panels(panels, "train: validation.csv (restored vs LQ input)", columns=3)


def face_panels(frame: pd.DataFrame, reference: Mapping) -> tuple[list[tuple[str, list[Series]]],
                                                                   dict[str, list[Reference]]]:
    """Detection rate with its Wilson band and FD per measured step; the real-face levels as references."""
    steps = frame["step"].to_numpy(dtype=float)
    n = int(frame["n_samples"].max())
    rate = Series(f"prior samples (n={n})", steps, frame["detection_rate"].to_numpy(dtype=float),
                  band=(frame["ci_low"].to_numpy(dtype=float), frame["ci_high"].to_numpy(dtype=float)),
                  band_label="Wilson 95% CI")
    fd = Series(f"prior samples vs real faces (n={n})", steps, frame["fd_dlib"].to_numpy(dtype=float))
    rates, fds = [rate], [fd]
    for lines, key in ((rates, "detection_rate"), (fds, "fd_dlib")):
        values = frame[f"{key}{NOISE_OFF}"].to_numpy(dtype=float) if f"{key}{NOISE_OFF}" in frame.columns else None
        if values is not None and np.isfinite(values).any():  # older runs have no noise-off cells
            lines.append(Series("same latents, noise inputs off", steps, values, emphasis=False))
    references: dict[str, list[Reference]] = {RATE_PANEL: [], FD_PANEL: []}
    for panel, key, label in ((RATE_PANEL, "detection_rate", "real faces at this size"),
                              (FD_PANEL, "fd_dlib", "real vs real (floor)")):
        value = reference.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            references[panel].append(Reference(label, float(value)))
    return [(RATE_PANEL, rates), (FD_PANEL, fds)], references


def face_view(folder: Path, errors: list[str]) -> FaceView | None:
    """prior_metrics.csv and prior_reference.json as a FaceView; None when the measurement did not run."""
    stored = read_json(folder / PRIOR_REFERENCE_JSON, errors)
    if isinstance(stored, Mapping) and "skipped" in stored:
        errors.append(f"face measurement skipped: {stored['skipped']}")
        return None
    frame = read_numeric_csv(folder / PRIOR_METRICS_CSV, errors)
    if frame is None or not len(frame):
        return None
    missing = [name for name in FACE_COLUMNS if name not in frame.columns]
    if missing:
        errors.append(f"{PRIOR_METRICS_CSV}: missing column(s) {', '.join(missing)}")
        return None
    if not (folder / PRIOR_REFERENCE_JSON).exists():
        errors.append(f"{PRIOR_REFERENCE_JSON} missing: the real-face levels are not shown")
    stored = stored if isinstance(stored, Mapping) else {}
    reference = stored.get("real_faces") if isinstance(stored.get("real_faces"), Mapping) else {}
    panels, references = face_panels(frame, reference)
    plot = line_panels(panels, "train_prior: prior_metrics.csv (fixed samples, EMA generator)", columns=2,
                       references=references)
    seconds = [float(v) for v in stored.get("seconds_per_checkpoint", []) if isinstance(v, int | float)]
    names = [*FACE_COLUMNS, *(name for name in (f"detection_rate{NOISE_OFF}", f"fd_dlib{NOISE_OFF}") if name in frame)]
    rows = {int(row["step"]): {name: float(row[name]) for name in names}
            for row in frame.to_dict("records") if all(math.isfinite(row[name]) for name in FACE_COLUMNS)}
    return FaceView(plot, validation_table(frame), dict(reference), str(stored.get("claim", "")), seconds,
                    int(frame["n_samples"].max()), rows)


def grid_note(row: Mapping) -> str:
    """'on 8 measured samples (not only these): faces detected 5/8 (0.625, 95% CI 0.31-0.86), FD 0.41'."""
    n = int(row["n_samples"])
    found = round(row["detection_rate"] * n)
    off = [row.get(f"{key}{NOISE_OFF}", math.nan) for key in ("detection_rate", "fd_dlib")]
    extra = f"; noise inputs off: {round(off[0] * n)}/{n}, FD {off[1]:.3g}" if all(map(math.isfinite, off)) else ""
    return (f"on {n} measured samples (not only these): faces detected {found}/{n} ({row['detection_rate']:.3g}, "
            f"95% CI {row['ci_low']:.2g}-{row['ci_high']:.2g}), FD {row['fd_dlib']:.3g}{extra}")


def _format_number(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return str(value)


def validation_table(frame: pd.DataFrame) -> Table:
    header = [str(name) for name in frame.columns]
    rows = [["" if isinstance(value, float) and math.isnan(value)
             else str(int(value)) if name in ("step", "pairs") and float(value).is_integer()
             else _format_number(float(value)) for name, value in zip(header, row, strict=True)]
            for row in frame.itertuples(index=False, name=None)]
    return Table(header, rows)


# -------------------------------------------------------------------------------------------- losses_active
def _json_text(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def term_rows(active: Mapping, logged: Mapping[str, int], column_of: Mapping[str, str],
              paper_weights: Mapping[str, float]) -> list[TermRow]:
    """losses_active.json's terms as rows, with what losses.csv logged for each term."""
    terms = active.get("terms") if isinstance(active.get("terms"), Mapping) else {}
    rows = []
    for term, entry in terms.items():
        term = str(term)
        if isinstance(entry, Mapping):
            weight = entry.get("weight")
            network, source, note = entry.get("network"), entry.get("source"), entry.get("note")
            details = {key: value for key, value in entry.items()
                       if key not in ("weight", "network", "source", "note")}
        else:
            weight, network, source, note, details = None, None, None, None, {"value": entry}
        column = column_of.get(term, term)
        count = logged.get(column)
        rows.append(TermRow(term=term, weight=weight, paper_weight=paper_weights.get(term), network=network,
                            source=source,
                            note="" if note is None else str(note),
                            details=", ".join(f"{key}: {_json_text(value)}" for key, value in details.items()),
                            logged=count, state=_term_state(weight, count, entry)))
    return rows


def _term_state(weight: object, logged: int | None, entry: object) -> str:
    """'active' only when the term has a positive weight and losses.csv has values for it."""
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        if isinstance(entry, str) and entry.lower().startswith("off"):
            return "off"
        return "active" if logged else "see note" if logged is None else "never logged"
    if weight <= 0:
        return "off (weight 0)"
    if logged is None:
        return "weight set; no column in losses.csv"
    return "active" if logged > 0 else "weight set but never logged"


def _settings(active: Mapping) -> list[tuple[str, str]]:
    return [(str(key), _json_text(value)) for key, value in active.items() if key != "terms"]


# ------------------------------------------------------------------------------------------------- grids
def _grid_files(samples_dir: Path) -> list[tuple[int, Path]]:
    if not samples_dir.is_dir():
        return []
    found = []
    for path in samples_dir.iterdir():
        match = STEP_FILE.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def spread(items: list, count: int) -> list:
    """At most `count` items evenly spaced from the first to the last (both kept)."""
    if len(items) <= count:
        return items
    if count <= 1:
        return items[-count:] if count else []
    positions = sorted({round(i * (len(items) - 1) / (count - 1)) for i in range(count)})
    return [items[i] for i in positions]


def copy_grids(spec: TrainingStage, samples_dir: Path, assets: Path) -> tuple[list[Grid], int]:
    """Copy the chosen grids into `assets` (PNG as is when small, shrunk JPEG when wide); (grids, total)."""
    files = _grid_files(samples_dir)
    grids = []
    for step, path in spread(files, MAX_GRIDS_SHOWN):
        try:
            payload = path.read_bytes()
        except OSError as error:
            grids.append(Grid(step, None, problem=f"unreadable ({error.strerror})"))
            continue
        decoded = decode_thumbnail(payload, GRID_MAX_SIDE)
        if decoded is None:
            grids.append(Grid(step, None, problem="not a readable PNG"))
            continue
        image, scale = decoded
        if scale < 1.0:
            name = f"{spec.asset_prefix}-step-{step:06d}.jpg"
            payload = encode_jpeg(np.asarray(image), GRID_JPEG_QUALITY)
        else:
            name = f"{spec.asset_prefix}-step-{step:06d}.png"
        (assets / name).write_bytes(payload)
        grids.append(Grid(step, f"{ASSETS_DIR}/{name}", image.width, image.height))
    return grids, len(files)


# -------------------------------------------------------------------------------------------------- stage
def stage_view(spec: TrainingStage, models_dir: Path, assets: Path) -> StageView:
    folder = models_dir / spec.folder_name
    view = StageView(spec.stage, str(folder), folder.is_dir(), grid_caption=spec.grid_caption)
    if not view.ran:
        view.partial = folder.with_name(folder.name + PARTIAL_SUFFIX).is_dir()
        return view
    try:
        receipt = read_receipt(folder)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        view.errors.append(f"receipt.json: unreadable ({error})")
        receipt = None
    if receipt is None and not view.errors:
        view.errors.append("receipt.json missing: the stage may not have finished")
    view.receipt = receipt_view(receipt if isinstance(receipt, dict) else None)

    losses = read_numeric_csv(folder / "losses.csv", view.errors)
    logged: dict[str, int] = {}
    if losses is not None:
        view.logged_steps = len(losses)
        view.losses = loss_columns(losses)
        logged = {column.name: column.logged for column in view.losses}
        view.loss_plot = loss_plot(losses, spec.stage) if len(losses) else None

    active = read_json(folder / "losses_active.json", view.errors)
    if isinstance(active, Mapping):
        view.mode = str(active["mode"]) if "mode" in active else None
        prior = spec.stage == "train_prior"
        view.terms = term_rows(active, logged, PRIOR_TERM_COLUMNS if prior else {},
                               {} if prior else PAPER_LOSS_WEIGHTS)
        view.settings = _settings(active)
    elif active is not None:
        view.errors.append("losses_active.json is not a JSON object")

    if spec.stage == "train":
        validation = read_numeric_csv(folder / "validation.csv", view.errors)
        if validation is not None and len(validation):
            view.validation = validation_table(validation)
            view.validation_plot = validation_plot(validation)
        config = read_json(folder / "gfpgan.json", view.errors)
        if isinstance(config, Mapping):
            view.model_config = [(str(key), _json_text(value)) for key, value in config.items()]
    else:
        view.faces = face_view(folder, view.errors)
    view.grids, view.grids_total = copy_grids(spec, folder / "samples", assets)
    if view.faces is not None:
        for grid in view.grids:
            if grid.step in view.faces.rows:
                grid.note = grid_note(view.faces.rows[grid.step])
    return view


def render(ctx: PageContext) -> str:
    """Gather both training stages' outputs, copy their sample grids, and render training.html."""
    with staged_output(ctx.out_dir / ASSETS_DIR) as assets:
        views = [stage_view(spec, ctx.models_dir, assets) for spec in STAGES]
    return ctx.render("training.html", current=PAGE.filename, title=PAGE.title, views=views,
                      models_dir=str(ctx.models_dir), max_grids=MAX_GRIDS_SHOWN,
                      last_percent=round(LAST_FRACTION * 100), ablation=read_ablation(ctx.params.report.prior_ablation),
                      ablation_metrics=[label for _, label, _ in ABLATION_METRICS])


PAGE = register(Page(slug="training", title="Training", filename="training.html",
                     stages=("train_prior", "train"), render=render))
