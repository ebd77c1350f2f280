"""Is the prior's structure a face before its samples are? Measure saved prior checkpoints twice: as train_prior
measures them (the stored noise maps), and with every noise input set to zero.

StyleGAN2 adds per-pixel noise, times a learned strength, after every style conv. In the narrow demo prior, the
samples of the stage's measurement are covered in dark speckle from that noise, and the speckle alone can hide a
face from the HOG detector. Setting the noise inputs to zero (the noise-free rendering) keeps everything the
styles decide and drops only the stochastic detail, so the two rows per checkpoint separate "no face layout yet"
from "a face layout under noise texture". Both use the stage's 64 fixed latents (dlfp.train.prior_metrics) and
its real-face reference (the first train faces, unflipped, at the prior's size).

Run, on trainer checkpoints (`<out>.partial/checkpoints/last.pth` of train_prior, copied as training goes):
    python benchmarks/prior_noise.py --shards data/shards --label 128px-eqlr CKPT.pth [CKPT.pth ...]
Writes benchmarks/results/prior_noise.csv (one row per label, step and noise mode, replacing that label's rows)
and prior_noise.md; with --figures DIR also the last checkpoint's sample grids, one per mode. A benchmark, never a
test. What the figures can and cannot claim is in the .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import torch

from dlfp.io.atomic import write_text_atomic
from dlfp.models.stylegan2 import StyleGAN2GeneratorClean
from dlfp.params import load_params
from dlfp.train import prior_metrics
from dlfp.train.data import SampleRecipe, ShardStream, train_records
from dlfp.train.engine.logging import save_image_grid
from dlfp.train.prior import render_samples

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_description  # noqa: E402
from prior_faces import replace_label_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CSV_NAME, MD_NAME = "prior_noise.csv", "prior_noise.md"
MODES = ("stored noise", "noise off")
GRID = 16  # samples per figure, two rows (as the stage's sample grids)
COLUMNS = ("label", "step", "mode", "detection_rate", "ci_low", "ci_high", "fd_dlib", "n_samples", "n_real",
           "real_detection_rate", "real_fd_floor", "checkpoint", "measured")
CLAIM = prior_metrics.CLAIM  # it says what the noise-off rows measure, too


def load_generator(path: Path) -> tuple[int, StyleGAN2GeneratorClean]:
    """(step, EMA generator) of a train_prior trainer checkpoint."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    state = payload["state"]
    generator = StyleGAN2GeneratorClean(**state["config"])
    generator.load_state_dict(state["ema"])
    return int(payload["step"]), generator.eval()


def markdown(rows: list[dict]) -> str:
    lines = ["# Is the prior's structure a face before its samples are? (benchmarks/prior_noise.py)", "",
             f"What this can and cannot claim: {CLAIM}", ""]
    for label in dict.fromkeys(row["label"] for row in rows):
        mine = [row for row in rows if row["label"] == label]
        first = mine[0]
        lines += [f"## {label}", "",
                  f"Real faces at this size: detection rate {float(first['real_detection_rate']):.4g}, FD floor "
                  f"(real vs real) {float(first['real_fd_floor']):.4g}; measured {first['measured']}.", "",
                  "| step | mode | detection rate | 95% CI | FD (dlib) | n |", "| --- | --- | --- | --- | --- | --- |"]
        for row in sorted(mine, key=lambda r: (int(r["step"]), MODES.index(r["mode"]))):
            lines.append(f"| {row['step']} | {row['mode']} | {float(row['detection_rate']):.4g} | "
                         f"{float(row['ci_low']):.3g}-{float(row['ci_high']):.3g} | {float(row['fd_dlib']):.4g} | "
                         f"{row['n_samples']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", type=Path, nargs="+", help="train_prior trainer checkpoints (.pth)")
    parser.add_argument("--shards", type=Path, required=True, help="the shard folder the prior trained on")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="for seed and eval_samples")
    parser.add_argument("--label", required=True)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--figures", type=Path, default=None,
                        help="also write the last checkpoint's first 16 samples per mode as PNG grids here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    p = params.train_prior
    by_step = {}  # one checkpoint per step (a copy of the same checkpoint taken twice counts once)
    for path in args.checkpoints:
        step, generator = load_generator(path)
        by_step[step] = (step, generator, path)
    found = [by_step[step] for step in sorted(by_step)]
    size = found[0][1].out_size
    stream = ShardStream(args.shards, train_records(args.shards), SampleRecipe(seed=params.seed, out_size=size,
                                                                                flip_prob=0.0), shuffle_buffer=1)
    measure = prior_metrics.FaceMeasure(prior_metrics.real_faces(iter(stream), 2 * p.eval_samples))
    latents = prior_metrics.eval_latents(params.seed, p.eval_samples, found[0][1].num_style_feat)
    measured = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    rows = []
    for step, generator, path in found:
        for mode in MODES:
            images = render_samples(generator, latents, noise_off=mode == "noise off")
            row = measure.measure(step, prior_metrics.to_uint8(images))
            if args.figures is not None and step == found[-1][0]:
                name = f"prior_{args.label}_step{step}_{mode.replace(' ', '-')}.png"
                save_image_grid(args.figures / name, list(images[:GRID].split(GRID // 2)))
            rows.append({**row, "label": args.label, "mode": mode, "checkpoint": path.name, "measured": measured,
                         "real_detection_rate": measure.reference["detection_rate"],
                         "real_fd_floor": measure.reference["fd_dlib"]})
            print(f"{args.label}: step {step} {mode}: detection {row['detection_rate']:.3f} "
                  f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}], FD {row['fd_dlib']:.3f}", flush=True)
    path = args.results / CSV_NAME
    everything = replace_label_rows(path, COLUMNS, args.label, rows)
    machine = machine_description()
    write_text_atomic(args.results / MD_NAME, markdown(everything) + f"\nMachine: {machine['cpu']}.\n")
    print(f"{args.label}: {len(rows)} rows -> {path}")


if __name__ == "__main__":
    main()
