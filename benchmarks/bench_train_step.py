"""One GFP-GAN training step at the demo configuration (params.yaml) on the CPU: ours vs the published formulation.

Run: `python benchmarks/bench_train_step.py [--threads 1] [--steps 5]`. Writes benchmarks/results/train_step.json
and train_step.md. Timings live here, never in tests.

Cases, each a full `GFPGANTrainer.step` (forward, every active loss, backward, optimiser steps, EMA) on the same
batch of real faces (LQ made by the demo's own `train.preset` degradation):
- "ours, demo losses": the network as trained (static-weight modulated convs, channels-last), the demo's loss
  weights;
- "published formulation, demo losses": the same weights run through benchmarks/bench_models.py's eager
  re-implementation of the reference computation (per-sample modulated weights, bilinear resampling), so the
  gradients flow through the published layers;
- "ours, paper loss weights": the demo network with every loss term of the published recipe switched on (GAN,
  facial components on fixed approximate eye/mouth boxes, perceptual/style and identity on the dlib port), to
  show what the demo saves by training with pixel, pyramid and identity losses only.
The default is 1 thread (the demo trains with `train.threads`, 2, beside a DataLoader worker): the cases are timed
side by side, so their ratio is the result, not the seconds. benchmarks/loss_schedule.py uses that ratio.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dlfp.degradation import degrade
from dlfp.faces.landmarks import COMPONENTS
from dlfp.io.atomic import write_json_atomic, write_text_atomic
from dlfp.io.images import decode_image_bytes, resize_for_model
from dlfp.losses.identity import load_identity_embedder
from dlfp.losses.perceptual import select_feature_network
from dlfp.models.stylegan2 import StyleGAN2GeneratorClean
from dlfp.params import LossWeights, Params, load_params
from dlfp.train.data import to_tensor
from dlfp.train.engine.distributed import DistInfo
from dlfp.train.gfpgan import GFPGANTrainer
from dlfp.train.prior import prior_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import PublishedFormulation  # noqa: E402
from machine import machine_description  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FACES = ROOT.parent / "shared" / "faces" / "aligned_hq"
SEED = 0
# Eye and mouth centres of an FFHQ-aligned face as fractions of its side, and their half sizes: fixed boxes are
# enough to time the component losses (the training data carries each face's own boxes).
COMPONENT_BOXES = {"left_eye": (0.37, 0.47, 0.07), "right_eye": (0.63, 0.47, 0.07), "mouth": (0.5, 0.74, 0.1)}


def real_batch(params: Params, size: int, count: int) -> dict:
    """`count` real faces at the data size, degraded with the demo's training preset (the first of a mixture),
    resized to the model."""
    preset = params.degrade.presets[params.train.presets[0]]
    gts, lqs = [], []
    for index, path in enumerate(sorted(FACES.glob("*.jpg"))[:count]):
        face = resize_for_model(decode_image_bytes(path.read_bytes(), source=path).rgb, params.data.size)
        lq, _ = degrade(face, preset, seed=SEED + index)
        gts.append(to_tensor(resize_for_model(face, size)))
        lqs.append(to_tensor(resize_for_model(lq, size)))
    boxes = {name: torch.tensor([[cx * size, cy * size, half * size]] * count)
             for name, (cx, cy, half) in COMPONENT_BOXES.items()}
    assert set(boxes) == set(COMPONENTS)
    return {"gt": torch.stack(gts), "lq": torch.stack(lqs), "boxes": boxes}


def make_trainer(params: Params, weights: LossWeights) -> GFPGANTrainer:
    p = params.train.model_copy(update={"weights": weights})
    config = prior_config(params.train_prior)
    torch.manual_seed(SEED)
    prior = StyleGAN2GeneratorClean(**config)
    device = torch.device("cpu")
    feature_net = select_feature_network(p.perceptual_network, device) \
        if weights.perceptual > 0 or weights.perceptual_style > 0 else None
    identity = load_identity_embedder(p.identity_network, device) if weights.identity > 0 else None
    return GFPGANTrainer(p, prior.state_dict(), config, SEED, DistInfo(), device, feature_net, identity)


def time_steps(trainer: GFPGANTrainer, batch: dict, warmup: int, steps: int) -> list[float]:
    times = []
    for step in range(1, warmup + steps + 1):
        started = time.perf_counter()
        trainer.step(batch, step)
        if step > warmup:
            times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    size = params.train_prior.out_size
    batch = real_batch(params, size, params.train.batch_size)
    paper = LossWeights()  # the schema's defaults are the published weights

    rows = []
    cases = [("ours, demo losses", params.train.weights, False),
             ("published formulation, demo losses", params.train.weights, True),
             ("ours, paper loss weights", paper, False)]
    for name, weights, published in cases:
        trainer = make_trainer(params, weights)
        if published:
            trainer.net_g.forward = PublishedFormulation(trainer.net_g).forward  # same parameters, eager layers
        times = time_steps(trainer, batch, args.warmup, args.steps)
        active = sorted(term for term, value in weights.model_dump().items()
                        if isinstance(value, float) and value > 0 and not term.startswith("pyramid_"))
        rows.append({"case": name, "median_s": round(statistics.median(times), 3),
                     "runs_s": [round(t, 3) for t in times], "losses": active})
        print(f"{name}: median {statistics.median(times):.3f} s per step ({len(times)} steps)", flush=True)

    payload = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine_description(),
               "load_average": [round(x, 2) for x in os.getloadavg()],
               "threads": args.threads, "batch_size": params.train.batch_size, "out_size": size,
               "data_size": params.data.size, "narrow": params.train_prior.narrow, "preset": params.train.preset,
               "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "train_step.json", payload)
    write_text_atomic(args.out / "train_step.md", render_markdown(payload))
    print(f"bench_train_step: {len(rows)} cases -> {args.out / 'train_step.md'}")


def render_markdown(payload: dict) -> str:
    machine = payload["machine"]
    lines = [
        "# One GFP-GAN training step at the demo configuration (CPU)",
        "",
        f"{payload['date']}, {machine.get('cpu', 'CPU')}, torch threads {payload['threads']}, batch "
        f"{payload['batch_size']}, {payload['out_size']} px networks (narrow {payload['narrow']}) on "
        f"{payload['data_size']} px data, LQ from the `{payload['preset']}` preset; 1-min load average at the "
        f"end {payload['load_average']} (the machine is shared: compare rows measured together).",
        "",
        "A step = forward, every active loss, backward, the optimiser steps of G and of every active "
        "discriminator, EMA update. The published formulation runs the same weights through the eager "
        "reference layers (benchmarks/bench_models.py).",
        "",
        "| case | median s per step | runs s | active losses |",
        "| --- | --- | --- | --- |",
    ]
    for row in payload["rows"]:
        lines.append(f"| {row['case']} | {row['median_s']:.3f} | {', '.join(map(str, row['runs_s']))} | "
                     f"{', '.join(row['losses'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
