"""Stage `bias`: does restoration work worse, or change how people look, for some groups of faces?

Method: ../shared/docs/bias-method.md. Groups come from the ground truth only:
- skin tone: the ITA band of the GT face (dlfp.bias.skin, illumination correction `bias.correction`), adjacent
  bands with fewer than `bias.min_group_size` test faces merged ("brown+dark") and flagged, never dropped;
- lightness and hue: Thong et al.'s L* < 60 and h* < 55 deg categories (a lighting-sturdier second view);
- gender and age: FFHQ attributes by ffhq_id (`labels_path`), age in the named `bias.age_bins`.
Faces whose GT tone cannot be measured are the group "not measured"; faces without labels "unknown": both stay
in every table, but gaps (worst - best) compare only the groups a grouping is about.

Per preset x restorer x grouping x group: every evaluate metric and the tone shift (dITA, dL*, CIEDE2000 dE,
restored vs GT on the GT mask, measured plainly) with percentile-bootstrap CIs; the worst-best gap and ratio
with CIs that re-pick worst and best in every resample, and a permutation p-value Holm-adjusted over the
groupings (the headline picks the largest gap among them); the share lightened with a sign test (Holm across
groups); the band flip matrix (GT and restored read with the GT's correction); the landmark detection failure
rate and the colour-lost rate (Wilson CIs); and, against the `bias.baseline` control, the paired per-face
difference. GT faces without colour (b* <= 0 or low chroma: ITA undefined) and restored faces that lost the
GT's colour have no dITA: they are counted, and kept out of every dITA test and view.

Outputs in <out>: per_face.csv, groups.csv, gaps.csv, tone_shift.csv, failures.csv, colour_lost.csv,
baseline.csv, flips.csv, composition.csv, bias.json (everything the report page needs), examples/ and worst/
(small JPEG strips named by number, never by sample id), receipt.json; and `summary_path` (reports/bias.json),
a compact summary.
Every bootstrap is seeded from derive_seed(params.seed, "bias", preset, restorer, grouping, metric).
"""

from __future__ import annotations

import heapq
import json
import math
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from dlfp.bias import skin, stats
from dlfp.data.shards import TEST_SPLIT, iter_samples, pair_presets, read_index, split_records
from dlfp.io.atomic import staged_output, write_bytes_atomic, write_csv_atomic, write_json_atomic
from dlfp.io.hashing import derive_seed, file_digest
from dlfp.io.images import decode_png_bytes
from dlfp.io.receipt import write_receipt
from dlfp.params import BiasParams, Params

INDEX_NAME = "index.json"
PER_IMAGE_NAME = "per_image.csv"
EVAL_SUMMARY_NAME = "summary.json"
BIAS_JSON = "bias.json"
LQ_RESTORER = "identity"        # evaluate scores the pairs' LQ under this name when restore did not write it
STATUS_OK = "ok"
NOT_COMPUTED = "not computed"
NOT_MEASURED = "not measured"   # GT without landmarks or with too little skin: no tone, still in every table
UNKNOWN = "unknown"             # no label for this face
DECIMALS = 6
THUMB_PX = 96
JPEG_QUALITY = 88
CONTOUR_COLOUR = (0, 255, 0)
SEED_NAMESPACE = "bias"
ITA_BIN_EDGES = tuple(float(edge) for edge in range(-90, 91, 15))   # continuous view of dITA against GT ITA
TONE_CATEGORIES = (*skin.ALL_GROUPS, NOT_MEASURED)

# Groupings: name -> (column in the per-face table, whether gaps compare all its groups but these).
GROUPINGS = ("skin_tone", "lightness", "hue", "gender", "age")
NOT_COMPARED = {NOT_MEASURED, UNKNOWN, skin.NO_COLOUR}

# Metrics: name -> higher_is_better (None: signed, no worst/best; its absolute value carries the gap).
EVAL_METRICS: dict[str, bool] = {"psnr": True, "ssim": True, "lpips": False, "niqe": False,
                                 "identity_distance": False, "identity_match": True, "landmark_nme": False}
TONE_METRICS: dict[str, bool | None] = {"d_ita": None, "abs_d_ita": False, "d_l_star": None,
                                        "abs_d_l_star": False, "delta_e": False}
METRICS: dict[str, bool | None] = {**EVAL_METRICS, **TONE_METRICS}
MEDIAN_METRICS = ("d_ita", "d_l_star", "delta_e")   # skewed or signed: the median is reported beside the mean
BOOLEAN_COLUMNS = ("identity_match", "landmarks_detected")
WORST_BY = "abs_d_ita"
NO_COLOUR_RULE = (f"median b* <= 0 (ITA undefined) or chroma < {skin.NO_COLOUR_CHROMA:g}; colour lost: the GT has "
                  "colour and the restored face, on the same mask, has not")


# ------------------------------------------------------------------------------------------- helpers
def _seed(params: Params, *parts: object) -> int:
    return derive_seed(params.seed, SEED_NAMESPACE, *parts)


def _finite(value: object) -> float | None:
    """JSON-safe number: NaN and infinities become null (strict JSON has no NaN)."""
    if value is None or isinstance(value, bool):
        return value  # type: ignore[return-value]
    number = float(value)  # type: ignore[arg-type]
    return round(number, DECIMALS) if math.isfinite(number) else None


def _jsonable(value: object) -> object:
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return _finite(value)
    return value


def _records(frame: pd.DataFrame) -> list[dict]:
    return [_jsonable(row) for row in frame.to_dict(orient="records")]  # type: ignore[misc]


def _csv_cell(value: object) -> object:
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        return "" if not math.isfinite(float(value)) else round(float(value), DECIMALS)
    return "" if value is None else value


def _write_frame(path: Path, frame: pd.DataFrame) -> None:
    write_csv_atomic(path, list(frame.columns), [[_csv_cell(v) for v in row] for row in frame.itertuples(False)])


def _thumb(image: np.ndarray) -> np.ndarray:
    return cv2.resize(image, (THUMB_PX, THUMB_PX), interpolation=cv2.INTER_AREA)


def _jpeg(image_rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return encoded.tobytes()


def _with_mask_outline(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The GT with the skin mask's outline, so a reader sees which skin the tone came from."""
    outlined = image.copy()
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(outlined, contours, -1, CONTOUR_COLOUR, 1)
    return outlined


# -------------------------------------------------------------------------------------------- labels
def read_labels(path: Path | None) -> tuple[dict[int, dict[str, object]], str]:
    """{ffhq_id: {"gender", "age"}} and a note saying where the labels came from (or why there are none)."""
    if path is None:
        return {}, "no labels file configured (bias.labels: null)"
    path = Path(path)
    if not path.is_file():
        return {}, f"labels file {path} not found: gender and age are '{UNKNOWN}'"
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise ValueError(f"{path}: unreadable labels CSV ({error})") from None
    missing = {"ffhq_id", "gender", "age"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: labels CSV lacks the column(s) {sorted(missing)}")
    labels: dict[int, dict[str, object]] = {}
    for row in frame.itertuples(index=False):
        try:
            ffhq_id = int(row.ffhq_id)
        except ValueError:
            continue   # a row for a non-FFHQ file: no id to join on
        try:
            age: float | None = float(row.age)
        except ValueError:
            age = None
        labels.setdefault(ffhq_id, {"gender": str(row.gender).strip() or UNKNOWN,
                                    "age": age if age is not None and math.isfinite(age) else None})
    return labels, f"{len(labels)} FFHQ ids with labels from {path}"


def age_group(age: float | None, bins: Mapping[str, tuple[float, float]]) -> str:
    if age is None:
        return UNKNOWN
    for name, (low, high) in bins.items():
        if low <= age < high:
            return name
    return UNKNOWN


# ------------------------------------------------------------------------------------ GT measurement
@dataclass
class FaceTone:
    """What the GT of one face gives the analysis: its groups, and the mask that every shift is measured on."""

    sample_id: str
    ffhq_id: int | None
    split: str
    band: str                         # grouping measurement (with the configured correction), unmerged
    band_plain: str                   # the same without correction, for the composition comparison
    ita_plain: float | None
    lightness: str
    hue: str
    gender: str
    age: float | None
    age_group: str
    measured: skin.ToneMeasurement | None = None
    recipe: skin.ToneRecipe | None = field(default=None, repr=False)   # replayed on the restored face (flips)
    problem: str = ""
    mask: np.ndarray | None = field(default=None, repr=False)
    eyes: np.ndarray | None = field(default=None, repr=False)
    landmarks: np.ndarray | None = field(default=None, repr=False)


def _ffhq_id(meta: Mapping) -> int | None:
    value = meta.get("ffhq_id")
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def measure_gt(sample_id: str, meta: Mapping, gt: np.ndarray, split: str, options: BiasParams,
               labels: Mapping[int, Mapping[str, object]]) -> FaceTone:
    """Group one GT face: tone from its stored landmarks (never from a restored image), labels by ffhq_id."""
    ffhq_id = _ffhq_id(meta)
    label = labels.get(ffhq_id, {}) if ffhq_id is not None else {}
    age = label.get("age")
    face = FaceTone(sample_id, ffhq_id, split, NOT_MEASURED, NOT_MEASURED, None, NOT_MEASURED, NOT_MEASURED,
                    str(label.get("gender", UNKNOWN)), age, age_group(age, options.age_bins))  # type: ignore[arg-type]
    landmarks = meta.get("landmarks")
    if landmarks is None:
        face.problem = "no stored landmarks"
        return face
    try:
        points = np.asarray(landmarks, dtype=np.float64)
        mask = skin.skin_mask(points, gt.shape[:2])
        eyes = skin.eye_mask(points, gt.shape[:2])
        recipe = skin.tone_recipe(gt, mask, options.correction, eyes=eyes)
        measured = skin.replay_tone(gt, mask, recipe)
        plain = skin.measure_tone(gt, mask)
    except (skin.NoSkinError, ValueError) as error:
        face.problem = str(error)
        return face
    face.measured, face.recipe, face.mask, face.eyes, face.landmarks = measured, recipe, mask, eyes, points
    face.band, face.band_plain, face.ita_plain = measured.band, plain.band, plain.ita_deg
    if not measured.no_colour:
        face.lightness = skin.lightness_category(measured.l_star)
        face.hue = skin.hue_category(measured.hue_deg)
    else:
        face.lightness = face.hue = skin.NO_COLOUR
    return face


def measure_splits(shards_dir: Path, options: BiasParams, labels: Mapping[int, Mapping[str, object]],
                   progress: tqdm) -> dict[str, FaceTone]:
    """Every clean face of every split (the composition), keyed by sample id."""
    index = read_index(shards_dir)
    faces: dict[str, FaceTone] = {}
    for split in index.get("splits", {}):
        for sample in iter_samples(shards_dir, split_records(index, split)):
            key = sample["__key__"]
            gt = decode_png_bytes(sample["gt.png"], source=f"{shards_dir}/{split}/{key}")
            faces[key] = measure_gt(key, json.loads(sample["json"]), gt, split, options, labels)
            progress.update()
    return faces


def composition(faces: Mapping[str, FaceTone], bins: Mapping[str, tuple[float, float]]) -> pd.DataFrame:
    """Counts and shares per split and grouping; every category listed, also when empty."""
    orders = {"skin_tone": TONE_CATEGORIES, "skin_tone_plain": TONE_CATEGORIES,
              "lightness": ("light", "dark", skin.NO_COLOUR, NOT_MEASURED),
              "hue": ("yellow", "red", skin.NO_COLOUR, NOT_MEASURED), "age": (*bins, UNKNOWN)}
    attributes = {"skin_tone": "band", "skin_tone_plain": "band_plain", "lightness": "lightness", "hue": "hue",
                  "gender": "gender", "age": "age_group"}
    rows = []
    splits = sorted({face.split for face in faces.values()}, key=lambda s: ("train", "val", "test").index(s)
                    if s in ("train", "val", "test") else 3)
    for split in splits:
        members = [face for face in faces.values() if face.split == split]
        for grouping, attribute in attributes.items():
            counts = Counter(str(getattr(face, attribute)) for face in members)
            order = list(orders.get(grouping, sorted(counts)))
            order += [name for name in sorted(counts) if name not in order]
            for group in order:
                rows.append({"split": split, "grouping": grouping, "group": group, "count": counts.get(group, 0),
                             "share": counts.get(group, 0) / len(members) if members else math.nan})
    return pd.DataFrame(rows, columns=["split", "grouping", "group", "count", "share"])


# --------------------------------------------------------------------------------------- evaluation
def read_evaluation(evaluation_dir: Path) -> tuple[pd.DataFrame, dict]:
    """per_image.csv as numbers (booleans as 0/1, blanks as NaN) and summary.json (for 'not computed' reasons)."""
    path = evaluation_dir / PER_IMAGE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `dlfp evaluate` first")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    needed = {"preset", "restorer", "id", *EVAL_METRICS, "landmarks_detected"}
    missing = needed - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: columns {sorted(missing)} missing; rerun `dlfp evaluate`")
    for column in (*EVAL_METRICS, "landmarks_detected"):
        if column in BOOLEAN_COLUMNS:
            frame[column] = frame[column].map({"true": 1.0, "false": 0.0}).astype(float)
        else:
            frame[column] = pd.to_numeric(frame[column].replace("", np.nan), errors="raise")
    summary_path = evaluation_dir / EVAL_SUMMARY_NAME
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    return frame, summary


def _metric_reason(summary: Mapping, metric: str) -> str:
    status = summary.get("metrics", {}).get(metric, {}).get("status") if isinstance(summary, Mapping) else None
    if isinstance(status, str) and status.startswith(NOT_COMPUTED):
        return status
    return f"{NOT_COMPUTED}: no {metric} values in the evaluation"


# ------------------------------------------------------------------------------------------ shifts
@dataclass
class Source:
    restorer: str
    folder: Path
    records: list[dict]
    image_key: str   # "restored.png" or "lq.png"


def _sources(pairs_index: Mapping, restored_dir: Path, restored_index: Mapping, preset: str,
             restorers: list[str]) -> dict[str, Source]:
    entries = restored_index.get("restorers", {})
    sources = {}
    for name in restorers:
        entry = entries.get(name, {})
        if entry.get("status") == STATUS_OK:
            if preset not in entry.get("presets", {}):
                raise ValueError(f"{restored_dir}: restorer {name} has no output for preset {preset}; rerun "
                                 "`dlfp restore`")
            sources[name] = Source(name, restored_dir, entry["presets"][preset]["shards"], "restored.png")
        elif name == LQ_RESTORER:
            sources[name] = Source(name, Path(), [], "lq.png")
        else:
            raise ValueError(f"{restored_dir}: restorer {name} was evaluated but has no restored images "
                             f"(status {entry.get('status', 'absent')!r}); rerun `dlfp restore` and `dlfp evaluate`")
    return sources


def _restored_streams(sources: Mapping[str, Source]) -> dict[str, Iterator[dict]]:
    return {name: iter_samples(source.folder, source.records) for name, source in sources.items()
            if source.image_key == "restored.png"}


@dataclass(order=True)
class _Candidate:
    score: float
    sample_id: str = field(compare=False)
    strip: np.ndarray = field(compare=False, repr=False)
    d_ita: float = field(compare=False)


def face_shift(gt: np.ndarray, restored: np.ndarray, face: FaceTone) -> tuple[dict, skin.ToneShift]:
    """Shift columns of one restored face against its measured GT: plain on the GT mask for dITA, dL*, dE,
    and the restored band read with the GT's own correction (same gains, same pixels) for the flip matrix."""
    if face.measured is None or face.recipe is None or face.mask is None:
        raise ValueError(f"{face.sample_id}: the GT tone was not measured ({face.problem})")
    shift = skin.tone_shift(gt, restored, face.mask)
    regrouped = skin.replay_tone(restored, face.mask, face.recipe)
    return {"ita_restored": shift.restored.ita_deg, "band_restored": regrouped.band, "d_ita": shift.d_ita,
            "d_l_star": shift.d_l_star, "d_a_star": shift.d_a_star, "d_b_star": shift.d_b_star,
            "delta_e": shift.delta_e, "ita_gt_uncorrected": shift.gt.ita_deg,
            "colour_lost": shift.colour_lost}, shift


def shift_rows(preset: str, pairs_dir: Path, pair_records: list[dict], sources: Mapping[str, Source],
               faces: Mapping[str, FaceTone], options: BiasParams, worst: dict[tuple[str, str], list[_Candidate]],
               skin_group: Mapping[str, str], progress: tqdm) -> list[dict]:
    """Tone shift of every (restorer, face) of one preset; keeps the top |dITA| faces per group in `worst`."""
    streams = _restored_streams(sources)
    rows = []
    for pair in iter_samples(pairs_dir, pair_records):
        key = pair["__key__"]
        gt = decode_png_bytes(pair["gt.png"], source=f"{pairs_dir}/{preset}/{key}")
        lq = decode_png_bytes(pair["lq.png"], source=f"{pairs_dir}/{preset}/{key}")
        face = faces[key] if key in skin_group else None   # None: a pair the evaluation did not score
        for name, source in sources.items():
            if source.image_key == "lq.png":
                restored = lq
            else:
                sample = next(streams[name], None)
                if sample is None or sample["__key__"] != key:
                    found = None if sample is None else sample["__key__"]
                    raise ValueError(f"{name}/{preset}: restored sample {found!r} where the pairs have {key!r}; "
                                     "rerun `dlfp restore` on the current pairs")
                restored = decode_png_bytes(sample["restored.png"], source=f"{name}/{preset}/{key}")
            if face is None:
                continue
            if restored.shape != gt.shape:
                raise ValueError(f"{name}/{preset}/{key}: restored {restored.shape} vs GT {gt.shape}")
            row = {"preset": preset, "restorer": name, "id": key}
            if face.measured is not None:
                columns, shift = face_shift(gt, restored, face)
                row.update(columns)
                candidates = worst.setdefault((preset, name, skin_group[key]), [])
                score = abs(shift.d_ita)
                if options.worst_cases and math.isfinite(score) and (
                        len(candidates) < options.worst_cases or score > candidates[0].score):
                    strip = np.concatenate([_thumb(gt), _thumb(lq), _thumb(restored)], axis=1)
                    item = _Candidate(score, key, strip, shift.d_ita)
                    if len(candidates) < options.worst_cases:
                        heapq.heappush(candidates, item)
                    else:
                        heapq.heapreplace(candidates, item)
            else:
                row.update(band_restored=NOT_MEASURED)
            rows.append(row)
            progress.update()
    for name, stream in streams.items():
        if next(stream, None) is not None:
            raise ValueError(f"{name}/{preset}: more restored samples than pairs; rerun `dlfp restore`")
    return rows


# ------------------------------------------------------------------------------------------ statistics
def merge_groups(faces: Mapping[str, FaceTone], test_ids: list[str], options: BiasParams
                 ) -> tuple[dict[str, dict[str, str]], dict[str, dict]]:
    """Per grouping: {id: merged group} over the test faces, and {group: {n, merged, too_small, members}}."""
    raw = {"skin_tone": [faces[i].band for i in test_ids], "lightness": [faces[i].lightness for i in test_ids],
           "hue": [faces[i].hue for i in test_ids], "gender": [faces[i].gender for i in test_ids],
           "age": [faces[i].age_group for i in test_ids]}
    orders: dict[str, tuple[str, ...]] = {"skin_tone": skin.BAND_ORDER, "age": tuple(options.age_bins)}
    assigned: dict[str, dict[str, str]] = {}
    info: dict[str, dict] = {}
    for grouping, labels in raw.items():
        grouping_result = stats.merge_small_groups(labels, orders.get(grouping, ()), options.min_group_size)
        merged = grouping_result.labels.tolist()
        assigned[grouping] = dict(zip(test_ids, merged, strict=True))
        sizes = Counter(merged)
        order = _group_order(grouping, list(sizes), options)
        info[grouping] = {group: {"group": group, "n": sizes[group], "merged": grouping_result.merged.get(group, False),
                                  "too_small": grouping_result.too_small.get(group, False),
                                  "members": sorted(band for band, to in grouping_result.mapping.items()
                                                    if to == group),
                                  "compared": group not in NOT_COMPARED}
                          for group in order}
    return assigned, info


def _group_order(grouping: str, groups: list[str], options: BiasParams) -> list[str]:
    """Light to dark, youngest to oldest; non-groups ("unknown", "not measured") last."""
    reference = {"skin_tone": skin.BAND_ORDER, "age": tuple(options.age_bins),
                 "lightness": ("light", "dark"), "hue": ("yellow", "red")}.get(grouping, ())

    def rank(group: str) -> tuple[int, int, str]:
        first = group.split(stats.MERGE_JOIN)[0]
        if group in NOT_COMPARED:
            return 2, 0, group
        return (0, reference.index(first), group) if first in reference else (1, 0, group)

    return sorted(groups, key=rank)


@dataclass
class Analysis:
    groups: list[dict] = field(default_factory=list)
    gaps: list[dict] = field(default_factory=list)
    tone: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    colour_lost: list[dict] = field(default_factory=list)
    baseline: list[dict] = field(default_factory=list)
    flips: list[dict] = field(default_factory=list)
    binned: list[dict] = field(default_factory=list)


def analyse_set(frame: pd.DataFrame, preset: str, restorer: str, group_info: Mapping[str, dict],
                params: Params, reasons: Mapping[str, str], result: Analysis) -> None:
    """Every per-group number of one (preset, restorer) set, appended to `result`."""
    options = params.bias
    for grouping in GROUPINGS:
        info = group_info[grouping]
        order = list(info)
        groups = frame[f"group_{grouping}"]
        for metric, higher in METRICS.items():
            values = frame[metric].to_numpy(dtype=np.float64)
            seed = _seed(params, preset, restorer, grouping, metric)
            statistics = ("mean", "median") if metric in MEDIAN_METRICS else ("mean",)
            if not np.isfinite(values).any():
                result.gaps.append({"preset": preset, "restorer": restorer, "grouping": grouping, "metric": metric,
                                    "status": reasons.get(metric, f"{NOT_COMPUTED}: no values")})
                continue
            for group in order:
                member = values[(groups == group).to_numpy()]
                for statistic in statistics:
                    ci = stats.bootstrap_ci(member, statistic, options.resamples, options.confidence, seed)
                    result.groups.append({"preset": preset, "restorer": restorer, "grouping": grouping,
                                          "group": group, "metric": metric, "statistic": statistic, "n": ci.n,
                                          "estimate": ci.estimate, "ci_low": ci.low, "ci_high": ci.high,
                                          **{k: info[group][k] for k in ("merged", "too_small", "compared")}})
            if higher is None:
                continue
            compared = [g for g in order if info[g]["compared"]]
            mask = groups.isin(compared).to_numpy()
            entry = {"preset": preset, "restorer": restorer, "grouping": grouping, "metric": metric}
            try:
                gap = stats.group_gap(values[mask], groups[mask].tolist(), higher, "mean", options.resamples,
                                      options.confidence, seed)
            except ValueError as error:
                result.gaps.append({**entry, "status": f"{NOT_COMPUTED}: {error}"})
                continue
            result.gaps.append({**entry, "status": STATUS_OK, "worst": gap.worst, "best": gap.best,
                                "gap": gap.gap, "gap_low": gap.gap_low, "gap_high": gap.gap_high,
                                "ratio": gap.ratio, "ratio_low": gap.ratio_low, "ratio_high": gap.ratio_high,
                                "higher_is_better": higher, "n_groups": gap.n_groups, "p": gap.p_value})
        # dITA exists only where GT and restored both have colour: colour lost and "no colour" stay out.
        measured = frame["d_ita"].notna().to_numpy()
        if measured.any():
            tests = stats.tone_shift_tests(frame.loc[measured, "d_ita"].to_numpy(), groups[measured].tolist(),
                                           options.equivalence_deg, 1 - options.confidence, options.resamples,
                                           _seed(params, preset, restorer, grouping, "tone"), order)
            for group, row in tests.iterrows():
                result.tone.append({"preset": preset, "restorer": restorer, "grouping": grouping, "group": group,
                                    **row.to_dict()})
        evaluated = frame["landmarks_detected"].notna().to_numpy()
        if evaluated.any():
            failed = frame.loc[evaluated, "landmarks_detected"].to_numpy() == 0
            rates = stats.failure_rates(failed, groups[evaluated].tolist(), options.confidence, order)
            for group, row in rates.iterrows():
                result.failures.append({"preset": preset, "restorer": restorer, "grouping": grouping,
                                        "group": group, **row.to_dict()})
        coloured = (frame["colour_lost"].notna() & (frame["band_gt"] != skin.NO_COLOUR)).to_numpy()
        if coloured.any():
            lost = frame.loc[coloured, "colour_lost"].astype(bool).to_numpy()
            rates = stats.failure_rates(lost, groups[coloured].tolist(), options.confidence, order)
            for group, row in rates.iterrows():
                result.colour_lost.append({"preset": preset, "restorer": restorer, "grouping": grouping,
                                           "group": group, "n": int(row["n"]),
                                           "n_colour_lost": int(row["n_failed"]),
                                           "rate": row["rate"], "rate_low": row["rate_low"],
                                           "rate_high": row["rate_high"]})
    adjust_gap_p(result.gaps, preset, restorer)
    measured = frame[frame["band_restored"].notna() & (frame["band_restored"] != NOT_MEASURED)]
    flips = stats.flip_matrix(measured["band_gt"].tolist(), measured["band_restored"].tolist())
    for gt_band, row in flips.iterrows():
        for restored_band, count in row.items():
            result.flips.append({"preset": preset, "restorer": restorer, "gt_band": gt_band,
                                 "restored_band": restored_band, "count": int(count)})
    coloured = frame[frame["d_ita"].notna()]          # the continuous view: no "no colour", no colour lost
    if len(coloured):
        binned = stats.binned_means(coloured["ita_gt"], coloured["d_ita"], ITA_BIN_EDGES)
        result.binned += [{"preset": preset, "restorer": restorer, **row} for row in binned.to_dict("records")]


def adjust_gap_p(gaps: list[dict], preset: str, restorer: str) -> None:
    """Holm over the groupings, per metric: the headline picks the largest gap among them (p_holm, in place)."""
    for metric in METRICS:
        family = [g for g in gaps if g["preset"] == preset and g["restorer"] == restorer and g["metric"] == metric
                  and g["status"] == STATUS_OK]
        for gap, adjusted in zip(family, stats.holm([g["p"] for g in family]), strict=True):
            gap["p_holm"] = float(adjusted)
            gap["family_size"] = len(family)


def baseline_differences(table: pd.DataFrame, preset: str, restorer: str, group_info: Mapping[str, dict],
                         params: Params, result: Analysis) -> None:
    """Model minus baseline per face (same preset, same face), then per group: separates model from metric bias."""
    options = params.bias
    mine = table[(table["preset"] == preset) & (table["restorer"] == restorer)].set_index("id")
    control = table[(table["preset"] == preset) & (table["restorer"] == options.baseline)].set_index("id")
    common = mine.index.intersection(control.index)
    for grouping in GROUPINGS:
        groups = mine.loc[common, f"group_{grouping}"]
        for metric in METRICS:
            difference = (mine.loc[common, metric] - control.loc[common, metric]).to_numpy(dtype=np.float64)
            if not np.isfinite(difference).any():
                continue
            seed = _seed(params, preset, restorer, grouping, metric, "baseline")
            for group in group_info[grouping]:
                ci = stats.bootstrap_ci(difference[(groups == group).to_numpy()], "mean", options.resamples,
                                        options.confidence, seed)
                result.baseline.append({"preset": preset, "restorer": restorer, "baseline": options.baseline,
                                        "grouping": grouping, "group": group, "metric": metric, "n": ci.n,
                                        "estimate": ci.estimate, "ci_low": ci.low, "ci_high": ci.high})


# ------------------------------------------------------------------------------------------ summary
def compact_summary(analysis: Analysis, composition_rows: pd.DataFrame, correction: str,
                    presets: list[str], restorers: list[str]) -> dict:
    """reports/bias.json: per preset x restorer the largest gap per metric (any grouping) and the tone shift."""
    results: dict[str, dict] = {}
    for preset in presets:
        for restorer in restorers:
            gaps = [g for g in analysis.gaps if g["preset"] == preset and g["restorer"] == restorer]
            largest: dict[str, dict] = {}
            for metric in (m for m, higher in METRICS.items() if higher is not None):
                computed = [g for g in gaps if g["metric"] == metric and g["status"] == STATUS_OK]
                if not computed:
                    reasons = [g["status"] for g in gaps if g["metric"] == metric]
                    largest[metric] = {"status": reasons[0] if reasons else f"{NOT_COMPUTED}: no groups"}
                    continue
                top = max(computed, key=lambda g: abs(g["gap"]))
                largest[metric] = {key: top[key] for key in ("grouping", "worst", "best", "gap", "gap_low",
                                                             "gap_high", "ratio", "ratio_low", "ratio_high", "p",
                                                             "p_holm", "family_size")}
            tone = {row["group"]: {"n": row["n"], "median_d_ita": row["median_d_ita"], "ci": [row["ci_low"],
                    row["ci_high"]], "share_lightened": row["share_lightened"], "sign_p_holm": row["sign_p_holm"],
                    "verdict": row["verdict"], "flagged": row["flagged"]}
                    for row in analysis.tone if row["preset"] == preset and row["restorer"] == restorer
                    and row["grouping"] == "skin_tone"}
            lost = {row["group"]: {"n": row["n"], "n_colour_lost": row["n_colour_lost"]}
                    for row in analysis.colour_lost if row["preset"] == preset and row["restorer"] == restorer
                    and row["grouping"] == "skin_tone"}
            results.setdefault(preset, {})[restorer] = {"largest_gap": largest, "tone_shift_by_skin_tone": tone,
                                                        "colour_lost_by_skin_tone": lost}
    composition_summary: dict[str, dict[str, int]] = {}
    for row in composition_rows[composition_rows["grouping"] == "skin_tone"].itertuples(index=False):
        composition_summary.setdefault(row.split, {})[row.group] = int(row.count)
    return _jsonable({"correction": correction, "composition_skin_tone": composition_summary,
                      "results": results})  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------ run
def _analysed(frame: pd.DataFrame, options: BiasParams) -> tuple[list[str], list[str]]:
    presets = list(dict.fromkeys(frame["preset"]))
    restorers = list(dict.fromkeys(frame["restorer"]))
    for wanted, available, what in ((options.presets, presets, "preset"), (options.restorers, restorers, "restorer")):
        unknown = sorted(set(wanted or ()) - set(available))
        if unknown:
            raise ValueError(f"bias.{what}s names {unknown}, but the evaluation has only {available}")
    return ([p for p in presets if options.presets is None or p in options.presets],
            [r for r in restorers if options.restorers is None or r in options.restorers])


def _per_face_table(shift: pd.DataFrame, evaluation: pd.DataFrame, faces: Mapping[str, FaceTone],
                    assigned: Mapping[str, Mapping[str, str]]) -> pd.DataFrame:
    table = evaluation.merge(shift, on=["preset", "restorer", "id"], how="left", validate="one_to_one")
    missing = table["band_restored"].isna()
    if missing.any():
        first = table.loc[missing].iloc[0]
        raise ValueError(f"evaluation row {first['preset']}/{first['restorer']}/{first['id']} has no restored "
                         "pair; rerun `dlfp evaluate` on the current restored images")
    for column, attribute in (("ffhq_id", "ffhq_id"), ("band_gt", "band"), ("band_gt_plain", "band_plain"),
                              ("gender", "gender"), ("age", "age")):
        table[column] = [getattr(faces[i], attribute) for i in table["id"]]
    for column, attribute in (("ita_gt", "ita_deg"), ("l_star_gt", "l_star"), ("hue_gt", "hue_deg"),
                              ("chroma_gt", "chroma")):
        table[column] = [getattr(faces[i].measured, attribute) if faces[i].measured else math.nan
                         for i in table["id"]]
    table["correction_applied"] = [faces[i].measured.correction if faces[i].measured else "" for i in table["id"]]
    table["measure_problem"] = [faces[i].problem for i in table["id"]]
    for grouping in GROUPINGS:
        table[f"group_{grouping}"] = [assigned[grouping][i] for i in table["id"]]
    # ITA is undefined for a GT without colour (also when only the corrected reading lacks it): no dITA.
    table.loc[table["band_gt"] == skin.NO_COLOUR, "d_ita"] = math.nan
    table["abs_d_ita"] = table["d_ita"].abs()
    table["abs_d_l_star"] = table["d_l_star"].abs()
    return table


SHIFT_COLUMNS = ("preset", "restorer", "id", "ita_restored", "band_restored", "d_ita", "d_l_star", "d_a_star",
                 "d_b_star", "delta_e", "ita_gt_uncorrected", "colour_lost")
PER_FACE_COLUMNS = ("preset", "restorer", "id", "ffhq_id", "ita_gt", "l_star_gt", "hue_gt", "chroma_gt",
                    "correction_applied", "band_gt", "band_gt_plain", "ita_gt_uncorrected", "ita_restored",
                    "band_restored", "colour_lost", *(f"group_{g}" for g in GROUPINGS), "gender", "age", "d_ita",
                    "abs_d_ita", "d_l_star", "abs_d_l_star", "d_a_star", "d_b_star", "delta_e", *EVAL_METRICS,
                    "landmarks_detected", "measure_problem")


def _save_images(staging: Path, worst: Mapping[tuple[str, str, str], list[_Candidate]],
                 faces: Mapping[str, FaceTone], examples_source: Mapping[str, np.ndarray],
                 group_info: Mapping[str, dict]) -> tuple[list[dict], list[dict]]:
    """JPEG strips named by number (ids are metadata, never file names); entries for bias.json."""
    worst_entries = []
    for number, ((preset, restorer, group), candidates) in enumerate(sorted(worst.items())):
        for rank, candidate in enumerate(sorted(candidates, reverse=True)):
            relative = f"worst/{number:04d}-{rank:02d}.jpg"
            write_bytes_atomic(staging / relative, _jpeg(candidate.strip))
            worst_entries.append({"preset": preset, "restorer": restorer, "group": group, "rank": rank,
                                  "id": candidate.sample_id, "d_ita": candidate.d_ita, "file": relative})
    example_entries = []
    order = {group: position for position, group in enumerate(group_info["skin_tone"])}
    for number, (sample_id, image) in enumerate(examples_source.items()):
        relative = f"examples/{number:04d}.jpg"
        write_bytes_atomic(staging / relative, _jpeg(image))
        face = faces[sample_id]
        example_entries.append({"id": sample_id, "band": face.band, "band_plain": face.band_plain,
                                "ita": face.measured.ita_deg if face.measured else None,
                                "correction_applied": face.measured.correction if face.measured else "",
                                "file": relative})
    example_entries.sort(key=lambda e: (order.get(e["band"], len(order)), e["id"]))
    return worst_entries, example_entries


def _examples(pairs_dir: Path, pair_records: list[dict], faces: Mapping[str, FaceTone], per_band: int
              ) -> dict[str, np.ndarray]:
    """The first `per_band` test faces (id order) of each unmerged band, with their skin mask outlined."""
    chosen: dict[str, np.ndarray] = {}
    taken: Counter[str] = Counter()
    if per_band == 0:
        return chosen
    for pair in iter_samples(pairs_dir, pair_records):
        face = faces.get(pair["__key__"])
        if face is None or face.mask is None or taken[face.band] >= per_band:
            continue
        gt = decode_png_bytes(pair["gt.png"], source=pair["__key__"])
        chosen[face.sample_id] = _thumb(_with_mask_outline(gt, face.mask))
        taken[face.band] += 1
    return chosen


def run(params: Params, *, shards_dir: Path, pairs_dir: Path, restored_dir: Path, evaluation_dir: Path,
        out_dir: Path, summary_path: Path, labels_path: Path | None) -> dict:
    """Measure, group and compare every evaluated test face; write the tables, bias.json and the summary."""
    started = time.monotonic()
    shards_dir, pairs_dir, restored_dir, evaluation_dir, out_dir, summary_path = map(
        Path, (shards_dir, pairs_dir, restored_dir, evaluation_dir, out_dir, summary_path))
    options = params.bias
    evaluation, eval_summary = read_evaluation(evaluation_dir)
    presets, restorers = _analysed(evaluation, options)
    evaluation = evaluation[evaluation["preset"].isin(presets) & evaluation["restorer"].isin(restorers)]
    pairs_index, restored_index = read_index(pairs_dir), read_index(restored_dir)
    labels, labels_note = read_labels(labels_path)
    shards_index = read_index(shards_dir)
    split_total = sum(int(entry.get("count", 0)) for entry in shards_index.get("splits", {}).values())
    test_presets = pair_presets(pairs_index, TEST_SPLIT)
    set_total = sum(int(test_presets[p]["count"]) for p in presets) * len(restorers)

    with staged_output(out_dir) as staging:
        with tqdm(total=split_total + set_total, desc="bias", unit="img") as progress:
            progress.set_postfix_str("GT skin tone")
            faces = measure_splits(shards_dir, options, labels, progress)
            test_ids = sorted(set(evaluation["id"]))
            first_records = test_presets[presets[0]]["shards"]
            unknown = [i for i in test_ids if i not in faces]
            if unknown:
                raise ValueError(f"{evaluation_dir}: test face {unknown[0]!r} is not in {shards_dir}; the "
                                 "evaluation and the shards come from different runs")
            assigned, group_info = merge_groups(faces, test_ids, options)
            worst: dict[tuple[str, str, str], list[_Candidate]] = {}
            shift: list[dict] = []
            for preset in presets:
                progress.set_postfix_str(preset)
                sources = _sources(pairs_index, restored_dir, restored_index, preset, restorers)
                shift += shift_rows(preset, pairs_dir, test_presets[preset]["shards"], sources, faces,
                                    options, worst, assigned["skin_tone"], progress)
        table = _per_face_table(pd.DataFrame(shift, columns=SHIFT_COLUMNS), evaluation, faces, assigned)
        reasons = {metric: _metric_reason(eval_summary, metric) for metric in EVAL_METRICS}
        analysis = Analysis()
        for preset in presets:
            for restorer in restorers:
                subset = table[(table["preset"] == preset) & (table["restorer"] == restorer)]
                analyse_set(subset, preset, restorer, group_info, params, reasons, analysis)
                if restorer != options.baseline and options.baseline in restorers:
                    baseline_differences(table, preset, restorer, group_info, params, analysis)
        composition_rows = composition(faces, options.age_bins)
        worst_entries, example_entries = _save_images(
            staging, worst, faces, _examples(pairs_dir, first_records, faces, options.examples), group_info)

        _write_frame(staging / "per_face.csv", table.reindex(columns=list(PER_FACE_COLUMNS)))
        frames = {"groups": analysis.groups, "gaps": analysis.gaps, "tone_shift": analysis.tone,
                  "failures": analysis.failures, "colour_lost": analysis.colour_lost, "baseline": analysis.baseline,
                  "flips": analysis.flips}
        for name, rows in frames.items():
            _write_frame(staging / f"{name}.csv", pd.DataFrame(rows))
        _write_frame(staging / "composition.csv", composition_rows)
        scatter = {preset: {restorer: table.loc[(table["preset"] == preset) & (table["restorer"] == restorer)
                                                & table["d_ita"].notna(), ["ita_gt", "d_ita"]].round(3)
                            .values.tolist() for restorer in restorers} for preset in presets}
        not_measured = {face.sample_id: face.problem for face in faces.values() if face.problem}
        raised = [face.measured.ita_deg - face.ita_plain for face in faces.values()
                  if face.measured is not None and not face.measured.no_colour]
        document = {
            "method": {"correction": options.correction, "min_group_size": options.min_group_size,
                       "resamples": options.resamples, "confidence": options.confidence,
                       "equivalence_deg": options.equivalence_deg, "baseline": options.baseline,
                       "age_bins": [[name, *bounds] for name, bounds in options.age_bins.items()],
                       "seed": params.seed,
                       "seed_rule": "derive_seed(seed, 'bias', preset, restorer, grouping, metric)",
                       "correction_median_raise_deg": float(np.median(raised)) if raised else None,
                       "correction_faces": len(raised), "labels": labels_note, "worst_by": WORST_BY,
                       "ita_bin_edges": list(ITA_BIN_EDGES),
                       "metrics": [{"metric": name, "higher_is_better": higher}
                                   for name, higher in METRICS.items()]},
            "presets": presets, "restorers": restorers, "groupings": list(GROUPINGS),
            "group_info": {grouping: list(groups.values()) for grouping, groups in group_info.items()},
            "composition": _records(composition_rows),
            "groups": _records(pd.DataFrame(analysis.groups)), "gaps": _jsonable(analysis.gaps),
            "tone_shift": _records(pd.DataFrame(analysis.tone)), "failures": _records(pd.DataFrame(analysis.failures)),
            "colour": {"no_colour_rule": NO_COLOUR_RULE,
                       "no_colour": {split: sum(1 for face in faces.values() if face.split == split
                                                and face.band == skin.NO_COLOUR)
                                     for split in dict.fromkeys(face.split for face in faces.values())},
                       "no_colour_test": sum(1 for i in test_ids if faces[i].band == skin.NO_COLOUR)},
            "colour_lost": _records(pd.DataFrame(analysis.colour_lost)),
            "baseline": _records(pd.DataFrame(analysis.baseline)), "flips": analysis.flips,
            "binned": _records(pd.DataFrame(analysis.binned)), "scatter": scatter, "worst": _jsonable(worst_entries),
            "examples": _jsonable(example_entries), "not_measured": not_measured,
            "not_computed": {metric: reason for metric, reason in reasons.items()
                             if not np.isfinite(table[metric].to_numpy(dtype=np.float64)).any()},
        }
        write_json_atomic(staging / BIAS_JSON, document)
        counts = {"faces": len(faces), "test_faces": len(test_ids), "rows": len(table),
                  "not_measured": len(not_measured)}
        write_receipt(staging, stage="bias", params_hash=params.section_hash("seed", "bias"), seed=params.seed,
                      counts=counts, inputs={"evaluation": str(evaluation_dir), "pairs": str(pairs_dir),
                                             "shards": str(shards_dir), "restored": str(restored_dir),
                                             "per_image_sha256": file_digest(evaluation_dir / PER_IMAGE_NAME),
                                             "labels": labels_note},
                      packages=("numpy", "scipy", "pandas", "scikit-image", "opencv-python-headless"))
    summary = compact_summary(analysis, composition_rows, options.correction, presets, restorers)
    write_json_atomic(summary_path, summary)

    elapsed = time.monotonic() - started
    bands = Counter(assigned["skin_tone"].values())
    print(f"bias: {len(test_ids)} test faces ({', '.join(f'{g} {n}' for g, n in bands.items())}), "
          f"{len(presets)} presets x {len(restorers)} restorers, {len(faces)} faces measured "
          f"({len(not_measured)} not measured) in {elapsed:.1f} s -> {out_dir}, {summary_path}")
    return {"test_faces": len(test_ids), "rows": len(table), "groups": {g: dict(Counter(a.values()))
            for g, a in assigned.items()}, "seconds": round(elapsed, 1), "out": str(out_dir),
            "summary": str(summary_path)}

