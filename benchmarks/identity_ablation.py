"""Is the identity gain the model's own? Train GFP-GAN twice, same steps and seed: with the demo's identity loss, and
with `train.weights.identity: 0`, then score both on every preset's **val** pairs.

The demo trains its identity loss with the dlib network that evaluate also uses for rank-1, so a rank-1 gain over the
LQ input could come from optimising the scorer's own network. Without the loss, whatever rank-1 is left is not
circular; PSNR and SSIM show what the loss costs or buys elsewhere.

Run (after `dvc repro train degrade`):
    python benchmarks/identity_ablation.py --reuse-trained models/gfpgan   # the demo's model is the first arm
Each arm goes through the pipeline's own stages (benchmarks/prior_ablation.py's run_arm) into --work (default
/tmp/dlfp-identity-ablation/<arm>); an arm whose model or evaluation is already there is not run again. The test
split is never read. Writes benchmarks/results/identity_ablation.json and .md (per preset, both arms' PSNR / SSIM /
rank-1 with 95% intervals and the paired difference identity loss on - off). A benchmark, never a test.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prior_ablation import arm_benchmark_arguments, compare, markdown, run_arms, run_record, write_results  # noqa: E402

JSON_NAME, MD_NAME = "identity_ablation.json", "identity_ablation.md"
ARMS = {"identity_on": {}, "identity_off": {"train.weights.identity": 0.0}}
ARM_ORDER = ("identity_on", "identity_off")  # the difference is on minus off
TITLE = "Is the identity gain the model's own? GFP-GAN with and without the identity loss (val pairs)"
CLAIM = ("Both arms are the same GFP-GAN recipe (steps, seed, data, other losses) and differ only in the identity "
         "loss's weight. The difference is paired per val face (95% t-interval for PSNR/SSIM, exact McNemar interval "
         "for rank-1). Rank-1 is scored with the dlib network that the identity loss trains against, so the on-arm's "
         "rank-1 is circular and the off-arm's is not: a rank-1 difference measures how much of the gain comes from "
         "optimising the scorer's own network. One seed: the run-to-run spread of training is not included.")


def main() -> None:
    args = arm_benchmark_arguments(__doc__, Path("/tmp/dlfp-identity-ablation"), "identity-on")
    minutes, arms = run_arms(args, ARMS, "identity_on")
    params = arms["identity_on"]
    weight = params.train.weights.identity
    labels = {"identity_on": f"identity loss at the demo's weight ({weight:g}, dlib network)",
              "identity_off": "identity loss off (train.weights.identity 0)"}
    options = (f"--reuse-trained {args.reuse_trained}",) if args.reuse_trained else ()
    doc = run_record(args, "identity_ablation.py", params.train.iters, params.seed, minutes, labels, CLAIM, options)
    doc["presets"] = compare(args.work, ARM_ORDER)
    write_results(args.out, JSON_NAME, MD_NAME, doc,
                  markdown(doc, TITLE, ARM_ORDER, ("identity loss on", "identity loss off")))


if __name__ == "__main__":
    main()
