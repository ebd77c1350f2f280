"""Does a prior recipe learn faces, and after how long? Train the prior with given overrides and keep its curve.

Run (the shards of a demo run; overrides as `dvc exp run -S` writes them, values in YAML):
    python benchmarks/prior_faces.py --shards data/shards --label demo
    python benchmarks/prior_faces.py --shards data/shards --label long -S train_prior.iters=2400 \\
        -S train_prior.sample_every=200
Writes the prior into --work (default /tmp/dlfp-prior-faces/<label>), or, with --collect RUN_DIR --minutes M,
takes the curve of a run trained elsewhere (e.g. a stopped `dlfp train_prior`'s <out>.partial), then appends its
face measurement (prior_metrics.csv: HOG face-detection rate with Wilson 95% CI, FD in dlib's descriptor space,
at step 0 and every sample step) to benchmarks/results/prior_faces.csv, one row per (label, step), replacing that
label's earlier rows, and rewrites prior_faces.md from the csv. Training runs for as long as its iters say: this
is a benchmark, never
a test. What the figures can and cannot claim is in dlfp.train.prior_metrics (and in the .md).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from dlfp.io.atomic import PARTIAL_SUFFIX, write_csv_atomic, write_text_atomic
from dlfp.params import parse_params
from dlfp.stages import train_prior as train_prior_stage
from dlfp.train import prior_metrics
from dlfp.train.engine.loop import TrainingInterrupted

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_description  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CSV_NAME, MD_NAME = "prior_faces.csv", "prior_faces.md"
COLUMNS = ("label", "overrides", "step", "minutes", "detection_rate", "ci_low", "ci_high", "fd_dlib", "n_samples",
           "real_detection_rate", "real_ci_low", "real_ci_high", "real_fd_floor", "date")


def apply_override(raw: dict, assignment: str) -> None:
    """'a.b.c=value' (value parsed as YAML) into the nested params dict."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise SystemExit(f"-S {assignment!r}: expected key=value, e.g. train_prior.iters=2400")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SystemExit(f"-S {assignment!r}: {part} is not a section")
    node[leaf] = yaml.safe_load(value)


def train(args: argparse.Namespace) -> tuple[dict, float]:
    raw = yaml.safe_load(args.params.read_text(encoding="utf-8"))
    for assignment in args.set:
        apply_override(raw, assignment)
    raw.setdefault("train_prior", {})["resume"] = False
    params = parse_params(raw, args.params)
    started = time.monotonic()
    try:
        summary = train_prior_stage.run(params, args.shards, args.work)
    except TrainingInterrupted as stopped:  # SIGTERM/SIGINT: keep the curve measured so far, labelled as such
        print(f"{args.label}: {stopped}; recording the checkpoints measured up to step {stopped.step}")
        args.work = args.work.with_name(args.work.name + PARTIAL_SUFFIX)
        args.set.append(f"(stopped at step {stopped.step} of {params.train_prior.iters})")
        summary = {"steps": stopped.step}
    return summary, (time.monotonic() - started) / 60


def curve_rows(args: argparse.Namespace, summary: dict, minutes: float) -> list[dict]:
    """The run's prior_metrics.csv rows with their label, the real-face levels and the (pro-rated) wall time."""
    reference = json.loads((args.work / prior_metrics.REFERENCE_JSON).read_text(encoding="utf-8"))
    if "skipped" in reference:
        raise SystemExit(f"{args.work}: the face measurement was skipped: {reference['skipped']}")
    real = reference["real_faces"]
    with open(args.work / prior_metrics.METRICS_CSV, newline="", encoding="utf-8") as handle:
        measured = list(csv.DictReader(handle))
    steps = max(1, int(summary["steps"]))
    date = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    return [{"label": args.label, "overrides": " ".join(args.set), "step": row["step"],
             "minutes": f"{minutes * int(row['step']) / steps:.3g}", **{k: row[k] for k in prior_metrics.COLUMNS[1:6]},
             "real_detection_rate": f"{real['detection_rate']:.4g}", "real_ci_low": f"{real['ci_low']:.4g}",
             "real_ci_high": f"{real['ci_high']:.4g}", "real_fd_floor": f"{real['fd_dlib']:.4g}", "date": date}
            for row in measured]


def first_face_like_step(rows: list[dict]) -> str:
    """The first step whose detection-rate interval overlaps the real faces' interval (not distinguishable from
    real faces by this measurement at this n), or 'not reached'."""
    for row in rows:
        if float(row["ci_high"]) >= float(row["real_ci_low"]):
            return f"step {row['step']} (~{row['minutes']} min)"
    return "not reached"


def markdown(rows: list[dict]) -> str:
    labels = list(dict.fromkeys(row["label"] for row in rows))
    lines = ["# Does the prior learn faces? (benchmarks/prior_faces.py)", "",
             f"Machine: {json.dumps(machine_description(), sort_keys=True)}; torch threads "
             f"{torch.get_num_threads()}.", "",
             f"What this can and cannot claim: {prior_metrics.CLAIM} Minutes are the run's wall time pro-rated "
             "by step (measurement included).", ""]
    for label in labels:
        mine = [row for row in rows if row["label"] == label]
        first = mine[0]
        lines += [f"## {label}", "", f"Overrides: `{first['overrides'] or '(none: params file as is)'}`; "
                  f"real faces at this size: detection rate {first['real_detection_rate']} (95% CI "
                  f"{first['real_ci_low']}-{first['real_ci_high']}), FD floor (real vs real) "
                  f"{first['real_fd_floor']}; measured {first['date']}.", "",
                  f"First step whose detection-rate CI reaches the real faces' CI: {first_face_like_step(mine)}.",
                  "", "| step | minutes | detection rate | 95% CI | FD (dlib) | n |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['step']} | {r['minutes']} | {r['detection_rate']} | {r['ci_low']}-{r['ci_high']} | "
                  f"{r['fd_dlib']} | {r['n_samples']} |" for r in mine]
        lines.append("")
    return "\n".join(lines)


def replace_label_rows(path: Path, columns: Sequence[str], label: str, rows: list[dict]) -> list[dict]:
    """Rewrite the results csv with `rows` in place of that label's earlier rows; returns every row."""
    kept: list[dict] = []
    if path.exists():
        with open(path, newline="", encoding="utf-8") as handle:
            kept = [row for row in csv.DictReader(handle) if row.get("label") != label]
    everything = kept + rows
    write_csv_atomic(path, columns, [[row.get(name, "") for name in columns] for row in everything])
    return everything


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=Path, required=True, help="the shard folder of a run (data/shards)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--label", required=True, help="name of this recipe in the results")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work", type=Path, default=None, help="where the prior is trained")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--collect", type=Path, default=None, metavar="RUN_DIR",
                        help="record the curve of a run trained elsewhere (its folder, or <out>.partial of a stopped "
                             "one) instead of training; -S then documents the overrides that run used")
    parser.add_argument("--minutes", type=float, default=None, help="with --collect: its wall time to the last "
                                                                     "measured step")
    args = parser.parse_args()
    args.work = args.work or Path(os.environ.get("TMPDIR", "/tmp")) / "dlfp-prior-faces" / args.label
    if args.collect is not None:  # a run trained elsewhere: its curve as measured, its wall time as given
        if args.minutes is None:
            raise SystemExit("--collect needs --minutes: the run's wall time to its last measured step")
        args.work = args.collect
        with open(args.work / prior_metrics.METRICS_CSV, newline="", encoding="utf-8") as handle:
            summary, minutes = {"steps": max(int(row["step"]) for row in csv.DictReader(handle))}, args.minutes
    else:
        summary, minutes = train(args)
    rows = curve_rows(args, summary, minutes)
    path = args.results / CSV_NAME
    everything = replace_label_rows(path, COLUMNS, args.label, rows)
    write_text_atomic(args.results / MD_NAME, markdown(everything) + "\n")
    print(f"{args.label}: {len(rows)} measured steps, first face-like: {first_face_like_step(rows)} -> {path}")


if __name__ == "__main__":
    main()
