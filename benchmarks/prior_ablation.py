"""Does the prior help? Train GFP-GAN twice, same steps and seed: on the trained prior, and on a randomly initialised
decoder (train.decoder_init random), then score both on every preset's **val** pairs.

Run (after `dvc repro train_prior degrade`, i.e. with data/shards, data/pairs and models/prior/prior.pth):
    python benchmarks/prior_ablation.py
    python benchmarks/prior_ablation.py -S train.iters=600      # overrides as `dvc exp run -S` writes them
    python benchmarks/prior_ablation.py --reuse-trained models/gfpgan   # the demo's model is the first arm
Each arm goes through the pipeline's own stages, in this process: `train`, `restore --split val` (gfpgan only) and
`evaluate --split val`, into --work (default /tmp/dlfp-prior-ablation/<arm>; an arm whose evaluation is already
there is not run again, so an interrupted benchmark resumes). The test split is never read.

Writes benchmarks/results/prior_ablation.json (the schema dlfp.report.prior_ablation renders on training.html:
per preset, both arms' PSNR / SSIM / rank-1 with 95% intervals and the paired per-face difference trained prior
minus random decoder, t-interval for PSNR/SSIM, exact McNemar for rank-1) and prior_ablation.md. A benchmark,
never a test: each arm trains for as long as train.iters says.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from dlfp.io.atomic import write_json_atomic, write_text_atomic
from dlfp.io.hashing import file_digest
from dlfp.io.receipt import read_receipt
from dlfp.layout import PER_IMAGE_NAME, SUMMARY_NAME
from dlfp.params import Params, parse_params
from dlfp.report.evaluation_glance import Point, difference, faces_by_run
from dlfp.report.model_card import t_interval
from dlfp.shards.format import VAL_SPLIT
from dlfp.stages import evaluate, restore
from dlfp.stages import train as train_stage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_description  # noqa: E402
from prior_faces import apply_override  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
JSON_NAME, MD_NAME = "prior_ablation.json", "prior_ablation.md"
ARMS = {"trained_prior": "prior", "random_decoder": "random"}  # arm -> train.decoder_init
ARM_ORDER = ("trained_prior", "random_decoder")  # the difference is first minus second
TITLE = "Does the prior help? GFP-GAN on the trained prior vs on a random decoder (val pairs)"
ARM_LABELS = {"trained_prior": "decoder initialised from the trained prior ({prior})",
              "random_decoder": "decoder randomly initialised (the same architecture and seed, no prior)"}
FIGURES = ("psnr", "ssim", "rank1_accuracy")
DIGITS = {"psnr": 2, "ssim": 4, "rank1_accuracy": 3}
RESTORER = "gfpgan"
CLAIM = ("Both arms are the same GFP-GAN recipe (steps, seed, data, losses) and differ only in where the StyleGAN2 "
         "decoder starts: the trained prior, or a random initialisation. The difference is paired per val face "
         "(95% t-interval for PSNR/SSIM, exact McNemar interval for rank-1). It answers whether this prior helps at "
         "this training length on these val faces; it is one seed, so it does not include the run-to-run spread of "
         "training, and it says nothing about a longer-trained or 512 px prior. Rank-1 is scored with the dlib "
         "network, which the identity loss also uses (circular for both arms alike).")


def shown_path(path: Path) -> str:
    """A path relative to the repository when it lies inside it (no home folders in committed results)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def arm_params(base: dict, arm_overrides: dict[str, object], work: Path, overrides: list[str]) -> Params:
    """params.yaml + the -S overrides + the arm's own (dotted key -> value), restoring from the arm's model."""
    raw = json.loads(json.dumps(base))  # a deep copy
    for assignment in overrides:
        apply_override(raw, assignment)
    for key, value in arm_overrides.items():
        apply_override(raw, f"{key}={json.dumps(value)}")
    raw.setdefault("restore", {}).update(restorers=[RESTORER], weights=str(work / "model" / "gfpgan.pth"))
    return parse_params(raw)


def reuse_trained(params: Params, model_dir: Path, prior: Path, work: Path) -> None:
    """Copy the pipeline's own train output as an arm when it is that arm: the same seed, degrade and train
    parameters (the receipt's params hash) and the same prior file."""
    receipt = read_receipt(model_dir)
    expected = params.section_hash("seed", "degrade", "train")
    if receipt is None or receipt.get("params_hash") != expected:
        raise SystemExit(f"{model_dir} was trained with other parameters (receipt params_hash "
                         f"{None if receipt is None else receipt.get('params_hash')}, this arm {expected}); "
                         "drop --reuse-trained to train the arm")
    if receipt.get("inputs", {}).get("prior_sha256") != file_digest(prior):
        raise SystemExit(f"{model_dir} was trained on another prior than {prior}")
    shutil.copytree(model_dir, work / "model", dirs_exist_ok=True)


def run_arm(params: Params, arm: str, work: Path, args: argparse.Namespace, reuse: Path | None = None) -> float:
    """train -> restore val -> evaluate val, skipping what is done (`reuse`: a checked train output as the model);
    returns the minutes spent."""
    started = time.monotonic()
    if reuse is not None and not (work / "model" / "gfpgan.pth").exists():
        reuse_trained(params, reuse, args.prior, work)
    if not (work / "model" / "gfpgan.pth").exists():
        train_stage.run(params, shards_dir=args.shards, prior_path=args.prior, pairs_dir=args.pairs,
                        out_dir=work / "model")
    if not (work / "restored" / "index.json").exists():
        restore.run(params, pairs_dir=args.pairs, out_dir=work / "restored", split=VAL_SPLIT)
    if not (work / "evaluation" / SUMMARY_NAME).exists():
        evaluate.run(params, pairs_dir=args.pairs, restored_dir=work / "restored", out_dir=work / "evaluation",
                     metrics_path=work / "metrics.json", split=VAL_SPLIT)
    print(f"{arm}: done ({(time.monotonic() - started) / 60:.1f} min)", flush=True)
    return (time.monotonic() - started) / 60


def arm_figures(summary: dict, faces: dict[str, dict], preset: str) -> dict[str, float]:
    """An arm's PSNR / SSIM (t-interval over faces) and rank-1 (Wilson, from evaluate) on one preset."""
    entry = summary["results"][preset][RESTORER]
    out: dict[str, float] = {}
    for key in ("psnr", "ssim"):
        values = np.asarray([float(row[key]) for row in faces.values()], dtype=float)
        low, high = t_interval(values)
        out.update({key: float(values.mean()), f"{key}_ci_low": low, f"{key}_ci_high": high})
    for suffix in ("", "_ci_low", "_ci_high"):
        out[f"rank1_accuracy{suffix}"] = float(entry[f"rank1_accuracy{suffix}"])
    return out


def compare(work: Path, arms: tuple[str, str] = ARM_ORDER) -> dict:
    """Per preset: both arms' figures and the paired difference first arm - second arm."""
    summaries, faces = {}, {}
    for arm in arms:
        folder = work / arm / "evaluation"
        summaries[arm] = json.loads((folder / SUMMARY_NAME).read_text(encoding="utf-8"))
        with open(folder / PER_IMAGE_NAME, newline="", encoding="utf-8") as handle:
            faces[arm] = faces_by_run(list(csv.DictReader(handle)))
    first, second = arms
    presets = {}
    for preset in sorted(summaries[first]["results"]):
        per_arm = {arm: faces[arm][(preset, RESTORER)] for arm in arms}
        entry: dict = {"count": len(per_arm[first])}
        for arm in arms:
            entry[arm] = arm_figures(summaries[arm], per_arm[arm], preset)
        diff = {}
        for key in FIGURES:
            a, b = (Point(entry[arm][key], entry[arm][f"{key}_ci_low"], entry[arm][f"{key}_ci_high"]) for arm in arms)
            found = difference(per_arm[first], per_arm[second], key, a, b, second, second)
            diff.update({key: found.value, f"{key}_ci_low": found.low, f"{key}_ci_high": found.high})
        entry["difference"] = diff
        presets[preset] = entry
    return presets


def markdown(doc: dict, title: str = TITLE, arms: tuple[str, str] = ARM_ORDER,
             headers: tuple[str, str] = ("trained prior", "random decoder")) -> str:
    steps = doc.get("steps_text") or f"{doc['steps']} steps per arm"
    lines = [f"# {title}", "",
             f"{doc['measured']}, {doc['machine']}, {steps}, seed {doc['seed']}, "
             f"split {doc['split']}. Command: `{doc['command']}`.", "", doc["claim"], "",
             *(f"Note: {note}" for note in doc.get("notes", [])), *([""] if doc.get("notes") else []),
             f"| preset | faces | figure | {headers[0]} | {headers[1]} | difference [95% CI] |",
             "| --- | --- | --- | --- | --- | --- |"]
    for preset, entry in doc["presets"].items():
        for key in FIGURES:
            d = DIGITS[key]

            def cell(values: dict, key: str = key, d: int = d, sign: str = "") -> str:
                return (f"{values[key]:{sign}.{d}f} [{values[f'{key}_ci_low']:{sign}.{d}f}, "
                        f"{values[f'{key}_ci_high']:{sign}.{d}f}]")
            lines.append(f"| {preset} | {entry['count']} | {key} | {cell(entry[arms[0]])} | "
                         f"{cell(entry[arms[1]])} | {cell(entry['difference'], sign='+')} |")
    return "\n".join(lines) + "\n"


def run_record(args: argparse.Namespace, script: str, steps: int, seed: int, minutes: dict[str, float],
               labels: dict[str, str], claim: str, options: tuple[str, ...] = ()) -> dict:
    """The common part of a benchmark's JSON: run, machine, arms, command (its `options` and -S overrides)."""
    machine = machine_description()
    command = " ".join([f"python benchmarks/{script}", *options, *(f"-S {item}" for item in args.set)])
    return {"split": VAL_SPLIT, "steps": steps, "seed": seed, "command": command,
            "measured": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
            "machine": f"{machine['cpu']}, {machine['affinity']} cores, torch {machine['versions']['torch']}",
            "machine_details": machine, "minutes_this_run": minutes,
            "arms": {arm: {"label": label} for arm, label in labels.items()}, "claim": claim, "notes": args.note}


def common_arguments(description: str, work: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--shards", type=Path, default=ROOT / "data" / "shards")
    parser.add_argument("--pairs", type=Path, default=ROOT / "data" / "pairs")
    parser.add_argument("--prior", type=Path, default=ROOT / "models" / "prior" / "prior.pth")
    parser.add_argument("--work", type=Path, default=work)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="parameter override, e.g. -S train.iters=600")
    parser.add_argument("--note", action="append", default=[],
                        help="a sentence for the result's notes (e.g. how an arm's model was made)")
    return parser


def check_inputs(args: argparse.Namespace, script: str) -> None:
    for path in (args.shards, args.pairs, args.prior):
        if not path.exists():
            raise SystemExit(f"{script}: {path} does not exist; run `dvc repro train_prior degrade` first")


def write_results(out: Path, json_name: str, md_name: str, doc: dict, text: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / json_name, doc)
    write_text_atomic(out / md_name, text)
    print(f"{len(doc['presets'])} presets -> {out / json_name}, {out / md_name}")


def arm_benchmark_arguments(description: str, work: Path, first_arm: str,
                            extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The common options, --reuse-trained (the pipeline's own model as `first_arm`) and `extra`'s, parsed and
    checked."""
    parser = common_arguments(description, work)
    parser.add_argument("--reuse-trained", type=Path, default=None, metavar="MODEL_DIR",
                        help=f"the train stage's output (models/gfpgan) as the {first_arm} arm, when its receipt "
                             "shows the same parameters and prior")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    check_inputs(args, Path(sys.argv[0]).stem)
    return args


def run_arms(args: argparse.Namespace, arms: dict[str, dict[str, object]],
             reuse_arm: str) -> tuple[dict[str, float], dict[str, Params]]:
    """Every arm (name -> its parameter overrides) through run_arm; `reuse_arm` may reuse --reuse-trained.
    Returns the minutes and the parameters of each arm."""
    base = yaml.safe_load(args.params.read_text(encoding="utf-8"))
    minutes, params = {}, {}
    for arm, overrides in arms.items():
        params[arm] = arm_params(base, overrides, args.work / arm, args.set)
        reuse = args.reuse_trained if arm == reuse_arm else None
        minutes[arm] = round(run_arm(params[arm], arm, args.work / arm, args, reuse), 1)
    return minutes, params


def main() -> None:
    args = arm_benchmark_arguments(__doc__, Path("/tmp/dlfp-prior-ablation"), "trained-prior")
    minutes, arms = run_arms(args, {arm: {"train.decoder_init": init} for arm, init in ARMS.items()},
                             "trained_prior")
    params = arms["trained_prior"]
    labels = {arm: ARM_LABELS[arm].format(prior=shown_path(args.prior)) for arm in ARMS}
    options = (f"--reuse-trained {args.reuse_trained}",) if args.reuse_trained else ()
    doc = run_record(args, "prior_ablation.py", params.train.iters, params.seed, minutes, labels, CLAIM, options)
    doc["presets"] = compare(args.work)
    write_results(args.out, JSON_NAME, MD_NAME, doc, markdown(doc))


if __name__ == "__main__":
    main()
