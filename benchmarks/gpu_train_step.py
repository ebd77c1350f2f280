"""Images per second of a GFP-GAN training iteration at 512 px on a GPU: eager vs torch.compile, fp32/bf16.

One iteration = the published recipe's work on synthetic tensors: generator step (pixel L1, pyramid L1,
VGG19 perceptual + style, global GAN, three facial-component GANs with Gram style on roi-aligned crops),
global-discriminator step (logistic, lazy R1 every 16 iterations), component-discriminator steps, EMA update.
The identity network is left out (its weights cannot be shipped); VGG19 runs with random weights (speed only).

Run on a GPU machine in one call (about 5 minutes, stops starting new modes after --budget-s):
    python benchmarks/gpu_train_step.py [OUT_JSON]            # default $OUT/gpu_train_step.json
CPU smoke test (64 px, tiny widths, one step per mode), so we know the script is not broken:
    python benchmarks/gpu_train_step.py --smoke /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlfp.models.components import FacialComponentDiscriminator
from dlfp.models.gfpgan import GFPGANv1Clean, release_model
from dlfp.models.stylegan2 import StyleGAN2Discriminator

# Loss weights of the published recipe (gfpgan-spec section 4).
W_PIXEL, W_PYRAMID, W_PERCEPTUAL, W_STYLE, W_GAN = 0.1, 1.0, 1.0, 50.0, 0.1
W_COMP_GAN, W_COMP_STYLE = 1.0, 200.0
R1_EVERY, R1_WEIGHT = 16, 10.0
LR, EMA_DECAY = 2e-3, 0.5 ** (32 / 10000)
VGG_LAYERS = {2: 0.1, 7: 0.1, 16: 1.0, 25: 1.0, 34: 1.0}  # pre-ReLU conv1_2, 2_2, 3_4, 4_4, 5_4 -> weight
# Component boxes at 512 px: (centre x, centre y, half size) and the roi-align output size.
COMPONENTS = {"left_eye": (193.0, 240.0, 40.0, 80), "right_eye": (319.0, 240.0, 40.0, 80),
              "mouth": (257.0, 371.0, 60.0, 120)}
REFERENCE_SIZE = 512
GPU_MODES = "eager-fp32,eager-bf16,compile-bf16,compile-fp32"
SMOKE_MODES = "eager-fp32,eager-bf16"


@dataclass
class Setup:
    size: int
    batch: int
    device: torch.device
    smoke: bool


def build_vgg(device: torch.device) -> nn.Sequential:
    from torchvision.models import vgg19

    features = vgg19(weights=None).features[: max(VGG_LAYERS) + 1]
    for i, layer in enumerate(features):
        if isinstance(layer, nn.ReLU):
            features[i] = nn.ReLU(inplace=False)  # keep the pre-ReLU outputs intact
    return features.to(device).eval().requires_grad_(False)


def vgg_features(vgg: nn.Sequential, x: Tensor) -> list[Tensor]:
    feats = []
    for i, layer in enumerate(vgg):
        x = layer(x)
        if i in VGG_LAYERS:
            feats.append(x)
    return feats


def gram(x: Tensor) -> Tensor:
    b, c, h, w = x.shape
    f = x.float().flatten(2)
    return f @ f.transpose(1, 2) / (c * h * w)


def component_crops(img: Tensor, size: int) -> dict[str, Tensor]:
    from torchvision.ops import roi_align

    scale = size / REFERENCE_SIZE
    b = img.shape[0]
    crops = {}
    for name, (cx, cy, half, out) in COMPONENTS.items():
        box = torch.tensor([cx - half, cy - half, cx + half, cy + half], device=img.device) * scale
        boxes = torch.cat([torch.arange(b, device=img.device, dtype=box.dtype)[:, None], box.expand(b, 4)], 1)
        out_size = max(16, round(out * scale))
        # roi_align has no bf16 CPU kernel (and autocast runs it in fp32 on the GPU anyway).
        crops[name] = roi_align(img.float(), boxes.float(), out_size, aligned=True)
    return crops


def build_models(setup: Setup) -> dict[str, nn.Module]:
    if setup.smoke:
        gen = GFPGANv1Clean(out_size=setup.size, num_style_feat=64, channel_multiplier=1, num_mlp=2,
                            narrow=0.25)
        disc = StyleGAN2Discriminator(setup.size, channel_multiplier=1, narrow=0.125)
    else:
        gen = release_model()  # decoder frozen, as in the paper recipe
        disc = StyleGAN2Discriminator(setup.size, channel_multiplier=1)
    models = {"gen": gen, "disc": disc, "vgg": build_vgg(setup.device)}
    for name in COMPONENTS:
        models[f"d_{name}"] = FacialComponentDiscriminator()
    for name, m in models.items():
        if name != "vgg":
            m.to(setup.device).train()
    return models


class TrainStep:
    """One GFP-GAN iteration; `compile_models` wraps G and D (forward + backward) with torch.compile."""

    def __init__(self, setup: Setup, models: dict[str, nn.Module], bf16: bool, compile_models: bool) -> None:
        self.setup, self.models, self.bf16 = setup, models, bf16
        self.gen_eager, self.disc_eager = models["gen"], models["disc"]
        self.gen = torch.compile(self.gen_eager) if compile_models else self.gen_eager
        self.disc = torch.compile(self.disc_eager) if compile_models else self.disc_eager
        self.ema = [p.detach().clone() for p in self.gen_eager.parameters() if p.requires_grad]
        g_params = [p for p in self.gen_eager.parameters() if p.requires_grad]
        self.opt_g = torch.optim.Adam(g_params, lr=LR, betas=(0.0, 0.99))
        self.opt_d = torch.optim.Adam(self.disc_eager.parameters(), lr=LR, betas=(0.0, 0.99 ** (16 / 17)))
        self.opt_c = torch.optim.Adam([p for n in COMPONENTS for p in models[f"d_{n}"].parameters()],
                                      lr=LR, betas=(0.9, 0.99))
        self.iteration = 0
        b, s, dev = setup.batch, setup.size, setup.device
        self.gt = torch.rand(b, 3, s, s, device=dev) * 2 - 1
        self.lq = (self.gt + 0.1 * torch.randn_like(self.gt)).clamp(-1, 1)

    def autocast(self):
        return torch.autocast(self.setup.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def __call__(self) -> float:
        m, gt, lq = self.models, self.gt, self.lq
        self.disc_eager.requires_grad_(False)
        for name in COMPONENTS:
            m[f"d_{name}"].requires_grad_(False)
        with self.autocast():
            out, rgbs = self.gen(lq)
            loss = W_PIXEL * F.l1_loss(out, gt)
            for rgb in rgbs:
                target = F.interpolate(gt, size=rgb.shape[-2:], mode="bilinear", align_corners=False)
                loss = loss + W_PYRAMID * F.l1_loss(rgb, target)
            fake_feats = vgg_features(m["vgg"], out)
            with torch.no_grad():
                real_feats = vgg_features(m["vgg"], gt)
            for (_, w), f, r in zip(VGG_LAYERS.items(), fake_feats, real_feats, strict=True):
                loss = loss + W_PERCEPTUAL * w * F.l1_loss(f, r) + W_STYLE * w * F.l1_loss(gram(f), gram(r))
            loss = loss + W_GAN * F.softplus(-self.disc(out)).mean()
            fake_crops = component_crops(out, self.setup.size)
            real_crops = component_crops(gt, self.setup.size)
            for name in COMPONENTS:
                pred, feats = m[f"d_{name}"](fake_crops[name], return_feats=True)
                with torch.no_grad():
                    _, real_c = m[f"d_{name}"](real_crops[name], return_feats=True)
                loss = loss + W_COMP_GAN * F.softplus(-pred).mean()
                loss = loss + W_COMP_STYLE * (0.5 * F.l1_loss(gram(feats[0]), gram(real_c[0]))
                                              + F.l1_loss(gram(feats[1]), gram(real_c[1])))
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()

        # Global discriminator.
        self.disc_eager.requires_grad_(True)
        fake = out.detach()
        with self.autocast():
            d_loss = F.softplus(-self.disc(gt)).mean() + F.softplus(self.disc(fake)).mean()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        if self.iteration % R1_EVERY == 0:  # lazy R1 in fp32 on the eager module (double backward)
            real = gt.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.disc_eager(real).sum(), real, create_graph=True)
            (R1_WEIGHT / 2 * R1_EVERY * grad.pow(2).flatten(1).sum(1).mean()).backward()
        self.opt_d.step()

        # Component discriminators.
        c_loss = torch.zeros((), device=gt.device)
        fake_crops = component_crops(fake, self.setup.size)
        with self.autocast():
            for name in COMPONENTS:
                d = m[f"d_{name}"].requires_grad_(True)
                real_pred, fake_pred = d(real_crops[name])[0], d(fake_crops[name])[0]
                c_loss = c_loss + F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()
        self.opt_c.zero_grad(set_to_none=True)
        c_loss.backward()
        self.opt_c.step()

        with torch.no_grad():
            params = [p for p in self.gen_eager.parameters() if p.requires_grad]
            torch._foreach_lerp_(self.ema, params, 1 - EMA_DECAY)
        self.iteration += 1
        return float(loss.detach())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_mode(setup: Setup, bf16: bool, compile_models: bool, warmup: int, steps: int) -> dict:
    torch.manual_seed(0)
    models = build_models(setup)
    if setup.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(setup.device)
    step = TrainStep(setup, models, bf16, compile_models)
    start = time.perf_counter()
    for _ in range(warmup):
        loss = step()
    sync(setup.device)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync(setup.device)
    seconds = time.perf_counter() - start
    result = {"bf16": bf16, "compile": compile_models, "batch": setup.batch, "size": setup.size,
              "warmup_steps": warmup, "warmup_s": round(warmup_s, 2), "steps": steps,
              "seconds": round(seconds, 3), "img_per_s": round(setup.batch * steps / seconds, 3),
              "last_loss": loss}
    if setup.device.type == "cuda":
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(setup.device) / 2**30, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, help="JSON path (default $OUT/gpu_train_step.json)")
    parser.add_argument("--smoke", action="store_true", help="64 px, tiny widths, CPU, 1 step per mode")
    parser.add_argument("--batch", type=int, default=4, help="images per step (published: 3 per GPU)")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=180.0, help="start no new mode after this")
    parser.add_argument("--modes", default=None,
                        help="comma list of {eager,compile}-{fp32,bf16}; default all four on a GPU and "
                             f"'{SMOKE_MODES}' with --smoke (inductor's C++ build takes minutes on 2 cores)")
    args = parser.parse_args()

    out = args.out or Path(os.environ.get("OUT", ".")) / "gpu_train_step.json"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.smoke:
        parser.error("no GPU here: use --smoke for the CPU check")
    if device.type == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")  # fp32 modes may use TF32 tensor cores
    setup = Setup(size=64 if args.smoke else 512, batch=2 if args.smoke else args.batch, device=device,
                  smoke=args.smoke)
    warmup, steps = (1, 1) if args.smoke else (args.warmup, args.steps)

    payload: dict = {
        "benchmark": "GFP-GAN training iteration (G + D + component Ds + EMA), synthetic tensors",
        "smoke": args.smoke, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "fp32_matmul_precision": "high (TF32)", "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "runs": [],
    }
    began = time.perf_counter()
    modes = args.modes or (SMOKE_MODES if args.smoke else GPU_MODES)
    for mode in modes.split(","):
        kind, dtype = mode.split("-")
        if time.perf_counter() - began > args.budget_s:
            payload["runs"].append({"mode": mode, "skipped": "time budget spent"})
            continue
        print(f"== {mode}", flush=True)
        try:
            result = run_mode(setup, dtype == "bf16", kind == "compile", warmup, steps)
        except Exception as error:  # noqa: BLE001 - report and go on with the other modes
            traceback.print_exc()
            result = {"error": f"{type(error).__name__}: {error}"[:800]}
        result["mode"] = mode
        payload["runs"].append(result)
        print(json.dumps(result), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2))  # partial results survive a timeout
    payload["total_s"] = round(time.perf_counter() - began, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
