"""Stage `evaluate`: score every restored test face against its GT, per preset and restorer.

`split` (test by default, what the pipeline runs) names the pairs read: "val" scores a `dlfp restore --split val`
folder for tuning, so the test pairs are read once, for the reported figures. The split is checked against the
restore index, and recorded in summary.json, metrics.json and the receipt. Wherever "test" appears below, a val
run reads the val pairs instead.

Inputs: the pairs (GT, LQ, GT landmarks) and the restore stage's output. The LQ input itself is evaluated as
restorer "lq" when the restore stage did not write it. Metrics and their settings: see dlfp.metrics.

Outputs: <out>/per_image.csv (one row per image x preset x restorer, every metric column, empty where not
computed), <out>/summary.json (aggregates, metric settings, the calibration with its impostor histogram, the
reason for every metric or restorer that was not computed), what the evaluation page shows beyond the figures
(gallery.json, worst_cases.json, timing.json and their JPEGs under images/, see page_assets.py; the gallery holds
report.pairs_per_preset pairs per preset), receipt.json, and `metrics_path`
(reports/metrics.json, for `dvc metrics show`): {preset: {restorer: {metric: number or "not computed: ..."}},
"split": "test" or "val", "accuracy": {...}, "calibration": {preset: {...}},
"colour_space": {"psnr": "RGB", "ssim": "Y of YIQ"}}.

The headline "accuracy" is rank-1 identification of one restorer on one preset (params.evaluate.headline_*),
with its Wilson 95% interval, next to the project's target: the fraction of restored faces whose nearest GT
descriptor (dlib, 128-D) among all of the preset's test GT faces is their own person's (copies of one FFHQ id
are one person). dlib's 0.6 threshold comes from its own chip alignment on LFW; here its false-accept rate is
measured on the test GT faces in our face frame (impostor pairs = GT pairs of different people), together with
the threshold at a false-accept rate of metrics.FAR_TARGET, and the verification match rates (restored vs own
GT closer than the threshold) at both thresholds are secondary figures. When a restorer's identity or
perceptual loss was trained with the dlib network that scores identity here (the restore index records it from
losses_active.json), its entry and the headline say so.

This package is the stage: scoring.py scores each image, summary.py makes the set-level figures, page_assets.py
writes the page's images; the metrics themselves live in dlfp.metrics. Nothing but cli.py imports it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from dlfp.devices import resolve_device
from dlfp.io.atomic import staged_output, write_csv_atomic, write_json_atomic
from dlfp.io.receipt import write_receipt
from dlfp.layout import LQ_RESTORER, PER_IMAGE_NAME, STATUS_OK, SUMMARY_NAME
from dlfp.metrics.identity import Calibration, IdentityScorer
from dlfp.metrics.iqa import COLOUR_SPACES, build_pyiqa_metrics, fid_between
from dlfp.metrics.landmarks import LandmarkScorer
from dlfp.params import Params
from dlfp.shards import streamed as streams
from dlfp.shards.format import TEST_SPLIT, check_pair_split, pair_presets
from dlfp.shards.local import read_index
from dlfp.stages.evaluate.page_assets import CAPTION_KEYS, write_page_assets
from dlfp.stages.evaluate.scoring import (
    COLUMNS,
    Scorers,
    list_sources,
    round_figure,
    score_source,
)
from dlfp.stages.evaluate.summary import (
    aggregate,
    calibrate_gallery,
    calibration_entry,
    circularity,
    csv_value,
    headline_accuracy,
    identification,
    metric_settings,
)


def run(params: Params, pairs_dir: Path, restored_dir: Path, out_dir: Path, metrics_path: Path,
        split: str = TEST_SPLIT) -> dict:
    """Score every restored face of the `split` pairs; write per_image.csv, summary.json, receipt and metrics.json."""
    started = time.monotonic()
    check_pair_split(split)
    pairs_dir, restored_dir, out_dir, metrics_path = map(Path, (pairs_dir, restored_dir, out_dir, metrics_path))
    pairs_index = read_index(pairs_dir)
    restored_index = read_index(restored_dir)
    sources, not_run = list_sources(pairs_dir, pairs_index, restored_dir, restored_index, split)
    torch.set_num_threads(params.evaluate.threads)
    device = resolve_device(params.evaluate.device)
    scorers = Scorers(pyiqa=build_pyiqa_metrics(device, params.evaluate.ssim_backend),
                      identity=IdentityScorer(device, params.evaluate.batch_size),
                      landmarks=LandmarkScorer(params.evaluate.landmark_frame), device=device)
    fid = scorers.pyiqa["fid"]

    results: dict[str, dict[str, dict]] = {}
    calibrations: dict[str, Calibration | str] = {}
    csv_rows: list[list[object]] = []
    shown: list[dict] = []  # what the page's gallery and worst cases show of each row
    split_presets = pair_presets(pairs_index, split)
    total = sum(int(split_presets[s.preset]["count"]) for s in sources)
    with staged_output(out_dir) as staging, tempfile.TemporaryDirectory(prefix="dlfp-fid-") as scratch:
        with tqdm(total=total, desc="evaluate", unit="img") as progress:
            for source in sources:
                progress.set_postfix_str(f"{source.restorer}/{source.preset}")
                fid_dirs = None
                if fid.available:
                    fid_dirs = (Path(scratch) / source.preset / source.restorer, Path(scratch) / "gt")
                    for folder in fid_dirs:
                        folder.mkdir(parents=True, exist_ok=True)
                pair_records = split_presets[source.preset]["shards"]
                rows = score_source(scorers, source, pairs_dir, pair_records, params.evaluate.batch_size,
                                fid_dirs, progress)
                gallery_ids = [row["id"] for row in rows]  # every source of a preset covers all its test pairs
                if source.preset not in calibrations:
                    calibrations[source.preset] = calibrate_gallery(scorers, gallery_ids)
                summary = aggregate(rows, scorers.gt_embeddings, scorers.pyiqa)
                summary.update(identification(rows, scorers.gt_embeddings, scorers.labels, gallery_ids,
                                              calibrations[source.preset]))
                summary["identity_metric_circularity"] = circularity(
                    source.restorer, restored_index.get("restorers", {}).get(source.restorer, {}).get("description"))
                if fid_dirs is None:
                    summary["fid"] = fid.reason
                else:
                    summary["fid"] = round_figure(fid_between(fid.compute, *fid_dirs))
                results.setdefault(source.preset, {})[source.restorer] = summary
                csv_rows += [[source.preset, source.restorer, row["id"], *(csv_value(row[c]) for c in COLUMNS[3:])]
                             for row in rows]
                shown += [{"preset": source.preset, "restorer": source.restorer, "id": row["id"],
                           **{key: row[key] for key in CAPTION_KEYS}} for row in rows]
        for preset in results:
            for name, reason in not_run.items():
                results[preset][name] = {"status": "not run", "reason": reason}
        calibration = {preset: calibration_entry(value) for preset, value in calibrations.items()}
        accuracy = headline_accuracy(params, results, not_run, calibration)
        settings = metric_settings(scorers.pyiqa, params.evaluate.landmark_frame)
        write_csv_atomic(staging / PER_IMAGE_NAME, COLUMNS, csv_rows)
        write_page_assets(staging, pairs_dir=pairs_dir, split_presets=split_presets, restored_dir=restored_dir,
                          restored_index=restored_index, rows=shown, order=[LQ_RESTORER, *params.restore.restorers],
                          per_preset=params.report.pairs_per_preset, lq_restorer=LQ_RESTORER, status_ok=STATUS_OK)
        histograms = {preset: {"edges": value.histogram_edges, "counts": value.histogram_counts}
                      for preset, value in calibrations.items() if isinstance(value, Calibration)}
        summary_doc = {"split": split, "metrics": settings, "results": results, "not_run": not_run,
                       "accuracy": accuracy, "calibration": calibration, "impostor_histograms": histograms}
        write_json_atomic(staging / SUMMARY_NAME, summary_doc)
        counts = {preset: {name: r.get("count", 0) for name, r in per.items()} for preset, per in results.items()}
        write_receipt(staging, stage="evaluate", params_hash=params.section_hash("evaluate"), seed=None,
                      counts=counts, inputs={"pairs": str(pairs_dir), "restored": str(restored_dir),
                                             "pairs_index_sha256": streams.index_digest(pairs_dir),
                                             "restored_index_sha256": streams.index_digest(restored_dir)},
                      packages=("torch", "pyiqa", "dlib-bin", "scipy", "numpy"),
                      extra={"split": split,
                             "not_computed": {name: info.reason for name, info in scorers.pyiqa.items()
                                              if not info.available}, "not_run": not_run})
    write_json_atomic(metrics_path, {**results, "split": split, "accuracy": accuracy, "calibration": calibration,
                                     "colour_space": COLOUR_SPACES})

    elapsed = time.monotonic() - started
    value = accuracy["value"]
    headline = f"{value:.3f} [{accuracy['ci_low']:.3f}, {accuracy['ci_high']:.3f}]" if isinstance(value, float) \
        else value
    print(f"evaluate: {len(csv_rows)} {split} images ({len(sources)} preset x restorer sets) in {elapsed:.1f} s; "
          f"rank-1 accuracy ({accuracy['restorer']}/{accuracy['preset']}) {headline}, target {accuracy['target']} "
          f"-> {out_dir}, {metrics_path}")
    return {"split": split, "images": len(csv_rows), "accuracy": accuracy, "not_run": not_run,
            "seconds": round(elapsed, 1), "out": str(out_dir), "metrics": str(metrics_path)}
