"""Do the adversarial, facial-component and perceptual terms help within the demo's budget? Train GFP-GAN twice for
the same training time on this machine, then score both on every preset's **val** pairs.

- `demo_losses`: params.yaml as it is (pixel, pyramid and identity terms, train.iters steps).
- `paper_terms`: the same, plus the GAN, facial-component (GAN and style) and perceptual (and style) terms at their
  published weights (the LossWeights defaults). A step costs more, so the arm gets fewer steps: train.iters divided
  by the step-cost ratio, which this run measures side by side first (benchmarks/bench_train_step.py's step on the
  same batch, both loss sets, `--ratio-steps` timed steps each at train.threads threads), rounded to 50 steps; the
  lr milestones shrink by the same factor (rounded to 10). `--cost-ratio R` skips the timing and uses R (to repeat
  a recorded run).

Run (after `dvc repro train degrade`, i.e. with data/shards, data/pairs, models/prior and models/gfpgan):
    python benchmarks/loss_schedule.py --reuse-trained models/gfpgan   # the demo's model is the first arm
Each arm goes through the pipeline's own stages (benchmarks/prior_ablation.py's run_arm) into --work (default
/tmp/dlfp-loss-schedule/<arm>); an arm whose model or evaluation is already there is not run again. The test split
is never read. Writes benchmarks/results/loss_schedule.json and loss_schedule.md (per preset, both arms' PSNR /
SSIM / rank-1 with 95% intervals and the paired difference paper_terms - demo_losses). A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import yaml

from dlfp.params import LossWeights, Params

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import make_trainer, real_batch, time_steps  # noqa: E402
from prior_ablation import (  # noqa: E402
    arm_benchmark_arguments,
    arm_params,
    compare,
    markdown,
    run_arms,
    run_record,
    write_results,
)

JSON_NAME, MD_NAME = "loss_schedule.json", "loss_schedule.md"
ARM_ORDER = ("paper_terms", "demo_losses")  # the difference is paper_terms minus demo_losses
EXTRA_TERMS = ("gan", "component_gan", "component_style", "perceptual", "perceptual_style")
TITLE = ("Do the GAN, facial-component and perceptual terms help within the budget? Same training time, val pairs")
STEP_ROUNDING, MILESTONE_ROUNDING = 50, 10
CLAIM = ("Both arms train for the same time on this machine: the paper-terms arm gets fewer steps, by the step-cost "
         "ratio in cost_ratio (timed side by side, in this run or, with --cost-ratio, in the benchmark run that "
         "the notes name). The difference is paired per val face (95% t-interval for "
         "PSNR/SSIM, exact McNemar interval for rank-1). It answers whether, at the demo's budget, these terms buy "
         "more than the steps they cost, on these metrics: PSNR and SSIM reward the pixel-faithful average that the "
         "GAN and style terms trade for texture, and no realism metric is measured here. One seed, so the run-to-run "
         "spread of training is not included; it says nothing about longer schedules. The perceptual terms run on "
         "the network in perceptual_network (the train stage's choice, from the model's losses_active.json: VGG19 "
         "when its weights are cached, else dlib's ResNet). Rank-1 is scored with the dlib network that the "
         "identity loss also uses (circular for both arms alike).")


def paper_weights(params: Params) -> dict[str, float]:
    """The demo's weights with every extra term at its published weight."""
    published = LossWeights()
    return {term: getattr(published, term) for term in EXTRA_TERMS}


def measure_cost_ratio(params: Params, steps: int) -> dict:
    """Median seconds per GFP-GAN step with the demo's losses and with the extra terms on, timed side by side."""
    torch.set_num_threads(params.train.threads)
    batch = real_batch(params, params.train_prior.out_size, params.train.batch_size)
    extra = params.train.weights.model_copy(update=paper_weights(params))
    medians = {}
    for arm, weights in (("demo_losses", params.train.weights), ("paper_terms", extra)):
        medians[arm] = round(statistics.median(time_steps(make_trainer(params, weights), batch, 2, steps)), 4)
        print(f"loss_schedule: {arm}: median {medians[arm]:.3f} s per step", flush=True)
    return {"median_s_per_step": medians, "ratio": round(medians["paper_terms"] / medians["demo_losses"], 3),
            "timed_steps": steps, "threads": params.train.threads}


def paper_schedule(params: Params, ratio: float) -> dict[str, object]:
    """train.iters and lr_milestones for the same training time at `ratio` times the cost per step."""
    iters = max(STEP_ROUNDING, round(params.train.iters / ratio / STEP_ROUNDING) * STEP_ROUNDING)
    scale = iters / params.train.iters
    milestones = [round(m * scale / MILESTONE_ROUNDING) * MILESTONE_ROUNDING for m in params.train.lr_milestones]
    return {"train.iters": iters, "train.lr_milestones": milestones,
            **{f"train.weights.{term}": value for term, value in paper_weights(params).items()}}


def cost_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ratio-steps", type=int, default=7, help="timed steps per loss set for the cost ratio")
    parser.add_argument("--cost-ratio", type=float, default=None, help="use this step-cost ratio, do not time it")


def main() -> None:
    args = arm_benchmark_arguments(__doc__, Path("/tmp/dlfp-loss-schedule"), "demo-losses", cost_options)
    demo = arm_params(yaml.safe_load(args.params.read_text(encoding="utf-8")), {}, args.work / "demo_losses", args.set)
    cost = ({"ratio": args.cost_ratio, "given": True} if args.cost_ratio is not None
            else measure_cost_ratio(demo, args.ratio_steps))
    schedules = {"demo_losses": {}, "paper_terms": paper_schedule(demo, cost["ratio"])}
    minutes, arms = run_arms(args, schedules, "demo_losses")
    labels = {"demo_losses": f"the demo's losses (pixel, pyramid, identity), {demo.train.iters} steps",
              "paper_terms": f"plus GAN, facial-component and perceptual terms at published weights, "
                             f"{arms['paper_terms'].train.iters} steps (the same time at {cost['ratio']:g}x per step)"}
    options = tuple(option for option in (
        f"--reuse-trained {args.reuse_trained}" if args.reuse_trained else "",
        f"--cost-ratio {args.cost_ratio:g}" if args.cost_ratio is not None else "") if option)
    doc = run_record(args, "loss_schedule.py", demo.train.iters, demo.seed, minutes, labels, CLAIM, options)
    doc.update(perceptual_network=perceptual_network(args.work / "paper_terms" / "model"),
               cost_ratio=cost, schedules=schedules, presets=compare(args.work, ARM_ORDER),
               steps_text=", ".join(f"{arm} {params.train.iters} steps" for arm, params in arms.items()))
    text = markdown(doc, TITLE, ARM_ORDER, ("paper terms, same time", "demo losses"))
    text += (f"\nStep-cost ratio: {cost['ratio']:g}x ({json.dumps(cost)}); perceptual network of the paper-terms "
             f"arm: {doc['perceptual_network']}. Schedules: `{json.dumps(schedules)}`.\n")
    write_results(args.out, JSON_NAME, MD_NAME, doc, text)


def perceptual_network(model_dir: Path) -> str:
    """The network the paper-terms arm's perceptual loss ran on, as its losses_active.json records it."""
    try:
        terms = json.loads((model_dir / "losses_active.json").read_text(encoding="utf-8"))["terms"]
        return str(terms["perceptual"]["source"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"not recorded ({type(error).__name__}: {error})"


if __name__ == "__main__":
    main()
