"""Stage `bias`: does restoration work worse, or change how people look, for some groups of faces?

Method: ../shared/docs/bias-method.md; the analysis lives in dlfp.bias (faces, analysis, stats, skin, labels,
gallery). Groups come from the ground truth only:
- skin tone: the ITA band of the GT face (dlfp.bias.skin, illumination correction `bias.correction`), adjacent
  bands with fewer than `bias.min_group_size` test faces merged ("brown+dark") and flagged, never dropped;
- lightness and hue: Thong et al.'s L* < 60 and h* < 55 deg categories (a lighting-sturdier second view);
- gender and age: FFHQ attributes by ffhq_id (`labels_path`), age in the named `bias.age_bins`.
This module reads the inputs (evaluate's per_image.csv and summary.json, the shards, pairs and restored tars,
the labels), streams the faces through dlfp.bias, and writes the outputs.

Outputs in <out>: per_face.csv, groups.csv, gaps.csv, tone_shift.csv, failures.csv, colour_lost.csv,
baseline.csv, flips.csv, composition.csv, bias.json (everything the report page needs), examples/ and worst/
(small JPEG strips named by number, never by sample id), receipt.json; and `summary_path` (reports/bias.json),
a compact summary.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from dlfp.bias import analysis, gallery
from dlfp.bias import faces as face_tones
from dlfp.bias.analysis import EVAL_METRICS, Analysis
from dlfp.bias.faces import NOT_MEASURED, FaceTone
from dlfp.bias.labels import read_labels
from dlfp.io.atomic import staged_output, write_json_atomic
from dlfp.io.hashing import file_digest
from dlfp.io.images import decode_png_bytes
from dlfp.io.receipt import write_receipt
from dlfp.io.tables import write_frame_csv
from dlfp.layout import BIAS_JSON, LQ_RESTORER, PER_IMAGE_NAME, STATUS_OK, SUMMARY_NAME
from dlfp.params import BiasParams, Params
from dlfp.shards.format import TEST_SPLIT, pair_presets, split_records
from dlfp.shards.local import iter_samples, read_index

BOOLEAN_COLUMNS = ("identity_match", "landmarks_detected")


# ----------------------------------------------------------------------------------------------- inputs
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
    summary_path = evaluation_dir / SUMMARY_NAME
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    return frame, summary


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


# ------------------------------------------------------------------------------------------------ faces
def measure_splits(shards_dir: Path, options: BiasParams, labels: Mapping[int, Mapping[str, object]],
                   progress: tqdm) -> dict[str, FaceTone]:
    """Every clean face of every split (the composition), keyed by sample id."""
    index = read_index(shards_dir)
    faces: dict[str, FaceTone] = {}
    for split in index.get("splits", {}):
        for sample in iter_samples(shards_dir, split_records(index, split)):
            key = sample["__key__"]
            gt = decode_png_bytes(sample["gt.png"], source=f"{shards_dir}/{split}/{key}")
            faces[key] = face_tones.measure_gt(key, json.loads(sample["json"]), gt, split, options, labels)
            progress.update()
    return faces


def shift_rows(preset: str, pairs_dir: Path, pair_records: list[dict], sources: Mapping[str, Source],
               faces: Mapping[str, FaceTone], options: BiasParams,
               worst: dict[tuple[str, str, str], list[gallery.WorstCase]], skin_group: Mapping[str, str],
               progress: tqdm) -> list[dict]:
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
                columns, shift = face_tones.face_shift(gt, restored, face)
                row.update(columns)
                candidates = worst.setdefault((preset, name, skin_group[key]), [])
                gallery.keep_worst(candidates, options.worst_cases, key, shift.d_ita, gt, lq, restored)
            else:
                row.update(band_restored=NOT_MEASURED)
            rows.append(row)
            progress.update()
    for name, stream in streams.items():
        if next(stream, None) is not None:
            raise ValueError(f"{name}/{preset}: more restored samples than pairs; rerun `dlfp restore`")
    return rows


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
        chosen[face.sample_id] = gallery.thumb(gallery.with_mask_outline(gt, face.mask))
        taken[face.band] += 1
    return chosen


# -------------------------------------------------------------------------------------------------- run
def run(params: Params, *, shards_dir: Path, pairs_dir: Path, restored_dir: Path, evaluation_dir: Path,
        out_dir: Path, summary_path: Path, labels_path: Path | None) -> dict:
    """Measure, group and compare every evaluated test face; write the tables, bias.json and the summary."""
    started = time.monotonic()
    shards_dir, pairs_dir, restored_dir, evaluation_dir, out_dir, summary_path = map(
        Path, (shards_dir, pairs_dir, restored_dir, evaluation_dir, out_dir, summary_path))
    options = params.bias
    evaluation, eval_summary = read_evaluation(evaluation_dir)
    presets, restorers = analysis.analysed_sets(evaluation, options)
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
            assigned, group_info = analysis.merge_groups(faces, test_ids, options)
            worst: dict[tuple[str, str, str], list[gallery.WorstCase]] = {}
            shift: list[dict] = []
            for preset in presets:
                progress.set_postfix_str(preset)
                sources = _sources(pairs_index, restored_dir, restored_index, preset, restorers)
                shift += shift_rows(preset, pairs_dir, test_presets[preset]["shards"], sources, faces,
                                    options, worst, assigned["skin_tone"], progress)
        table = analysis.per_face_table(pd.DataFrame(shift, columns=analysis.SHIFT_COLUMNS), evaluation, faces,
                                        assigned)
        reasons = {metric: analysis.metric_reason(eval_summary, metric) for metric in EVAL_METRICS}
        result = Analysis()
        for preset in presets:
            for restorer in restorers:
                subset = table[(table["preset"] == preset) & (table["restorer"] == restorer)]
                analysis.analyse_set(subset, preset, restorer, group_info, params, reasons, result)
                if restorer != options.baseline and options.baseline in restorers:
                    analysis.baseline_differences(table, preset, restorer, group_info, params, result)
        composition_rows = face_tones.composition(faces, options.age_bins)
        worst_entries, example_entries = gallery.save_images(
            staging, worst, faces, _examples(pairs_dir, first_records, faces, options.examples), group_info)

        write_frame_csv(staging / "per_face.csv", table.reindex(columns=list(analysis.PER_FACE_COLUMNS)))
        frames = {"groups": result.groups, "gaps": result.gaps, "tone_shift": result.tone,
                  "failures": result.failures, "colour_lost": result.colour_lost, "baseline": result.baseline,
                  "flips": result.flips}
        for name, rows in frames.items():
            write_frame_csv(staging / f"{name}.csv", pd.DataFrame(rows))
        write_frame_csv(staging / "composition.csv", composition_rows)
        document = analysis.bias_document(
            params, presets=presets, restorers=restorers, faces=faces, test_ids=test_ids, table=table,
            group_info=group_info, composition_rows=composition_rows, analysis=result, reasons=reasons,
            labels_note=labels_note, worst_entries=worst_entries, example_entries=example_entries)
        write_json_atomic(staging / BIAS_JSON, document)
        not_measured = document["not_measured"]
        counts = {"faces": len(faces), "test_faces": len(test_ids), "rows": len(table),
                  "not_measured": len(not_measured)}
        write_receipt(staging, stage="bias", params_hash=params.section_hash("seed", "bias"), seed=params.seed,
                      counts=counts, inputs={"evaluation": str(evaluation_dir), "pairs": str(pairs_dir),
                                             "shards": str(shards_dir), "restored": str(restored_dir),
                                             "per_image_sha256": file_digest(evaluation_dir / PER_IMAGE_NAME),
                                             "labels": labels_note},
                      packages=("numpy", "scipy", "pandas", "scikit-image", "opencv-python-headless"))
    summary = analysis.compact_summary(result, composition_rows, options.correction, presets, restorers)
    write_json_atomic(summary_path, summary)

    elapsed = time.monotonic() - started
    bands = Counter(assigned["skin_tone"].values())
    print(f"bias: {len(test_ids)} test faces ({', '.join(f'{g} {n}' for g, n in bands.items())}), "
          f"{len(presets)} presets x {len(restorers)} restorers, {len(faces)} faces measured "
          f"({len(not_measured)} not measured) in {elapsed:.1f} s -> {out_dir}, {summary_path}")
    return {"test_faces": len(test_ids), "rows": len(table), "groups": {g: dict(Counter(a.values()))
            for g, a in assigned.items()}, "seconds": round(elapsed, 1), "out": str(out_dir),
            "summary": str(summary_path)}
