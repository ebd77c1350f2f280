"""The StyleGAN2 facial prior (clean layout): its trainer, its face measurement and its prior.pth file.

Non-saturating logistic loss, lazy R1 on the discriminator, style mixing, EMA generator; no path-length
regularisation (optional in StyleGAN2, skipped here and recorded in losses_active.json). `PriorTraining` is what
dlfp.train.engine.run.run_training needs to train it; `convert_official` loads an official clean StyleGAN2
checkpoint strictly instead. The stage that calls them is dlfp.stages.train_prior (its outputs are listed there).

May import dlfp.train.engine, dlfp.train.data, dlfp.train.prior_metrics, models, losses and io; never a stage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor

from dlfp.io.atomic import write_json_atomic
from dlfp.io.hashing import derive_seed
from dlfp.layout import PRIOR_FILE
from dlfp.losses.gan import (
    discriminator_loss,
    generator_loss,
    lazy_betas,
    lazy_lr,
    lazy_r1_loss,
    r1_penalty,
)
from dlfp.models.checkpoints import save_torch
from dlfp.models.stylegan2 import (
    StyleGAN2Discriminator,
    StyleGAN2GeneratorClean,
    equalized_lr_multipliers,
    noise_strength_names,
)
from dlfp.params import Params, TrainPriorParams
from dlfp.shards import streamed as streams
from dlfp.train.data import SampleRecipe, ShardStream
from dlfp.train.diffaugment import DiffAugment
from dlfp.train.engine.checkpoint import check_resume_config, result_params
from dlfp.train.engine.distributed import DistInfo, average_gradients, broadcast_module
from dlfp.train.engine.ema import EMA, ema_decay
from dlfp.train.engine.logging import LossLog, save_image_grid
from dlfp.train.engine.loop import adam_with_lr_multipliers, lr_at, requires_grad, set_lr
from dlfp.train.engine.run import TrainingJob
from dlfp.train.prior_metrics import (
    CLAIM,
    METRICS_CSV,
    MIN_REAL_FACES,
    NOISE_OFF,
    REFERENCE_JSON,
    FaceMeasure,
    MetricsLog,
    eval_latents,
    real_faces,
    to_uint8,
)

log = logging.getLogger(__name__)

LOSSES_ACTIVE = "losses_active.json"
SAMPLES_DIR = "samples"
GRID_SAMPLES = 16
ADAM_BETAS = (0.0, 0.99)  # StyleGAN2 / GFP-GAN
LOSS_COLUMNS = ["g_gan", "d_gan", "r1", "real_score", "fake_score", "lr"]


def prior_config(p: TrainPriorParams) -> dict:
    """Constructor arguments of StyleGAN2GeneratorClean, stored in prior.pth for the train stage."""
    return {"out_size": p.out_size, "num_style_feat": p.num_style_feat, "num_mlp": p.num_mlp,
            "channel_multiplier": p.channel_multiplier, "narrow": p.narrow}


def provenance_params(params: Params, shards_dir: Path) -> dict[str, object]:
    """Everything the trained prior depends on, as dotted keys (see engine.checkpoint.RESULT_NEUTRAL_KEYS)."""
    return {"seed": params.seed, "data.size": params.data.size,
            **result_params("train_prior", params.train_prior.model_dump(mode="json")),
            "inputs.shards_index_sha256": streams.index_digest(shards_dir)}


def load_prior(path: Path | str) -> tuple[dict[str, Tensor], dict]:
    """(generator state_dict, config) of a prior.pth written by this stage."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "params_ema" not in payload or "config" not in payload:
        raise RuntimeError(f"{path}: not a dl-fp prior (expected 'params_ema' and 'config'); run `dlfp train_prior`")
    return payload["params_ema"], dict(payload["config"])


def save_prior(path: Path, generator: torch.nn.Module, config: dict) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    save_torch({"params_ema": state, "config": config}, path)


def mixed_latents(generator: StyleGAN2GeneratorClean, batch: int, mixing_prob: float,
                  device: torch.device) -> list[Tensor]:
    """One z per sample, or two (style mixing) with probability mixing_prob."""
    count = 2 if mixing_prob > 0 and float(torch.rand(())) < mixing_prob else 1
    return [torch.randn(batch, generator.num_style_feat, device=device) for _ in range(count)]


def generator_adam(generator: StyleGAN2GeneratorClean, lr: float, equalized_lr: bool,
                   noise_inputs: bool = True) -> torch.optim.Adam:
    """Adam on the generator: one lr, or (equalized_lr) StyleGAN2's per-weight scales (equalized_lr_multipliers).

    Without noise_inputs the noise strengths are left out of the optimiser, so they keep their initial 0: the
    noise maps are still drawn but add nothing, and the saved prior carries no noise either.
    """
    frozen = set() if noise_inputs else noise_strength_names(generator)
    trained = [(name, param) for name, param in generator.named_parameters() if name not in frozen]
    multipliers = equalized_lr_multipliers(generator) if equalized_lr else {}
    return adam_with_lr_multipliers(trained, lr, multipliers, ADAM_BETAS)


@torch.no_grad()
def render_samples(generator: StyleGAN2GeneratorClean, z: Tensor, noise_off: bool = False,
                   device: torch.device | str = "cpu") -> Tensor:
    """Images (N, 3, S, S) on the CPU for latents z (N, D) with the generator's stored noise maps, comparable across
    checkpoints; or (noise_off) with every noise input at zero: the layout the styles draw without per-pixel detail."""
    noise = [torch.zeros_like(n) if noise_off else n for n in generator.fixed_noises()]
    return torch.cat([generator(chunk.to(device), noise=noise)[0].float().cpu()
                      for chunk in z.split(GRID_SAMPLES)]) if len(z) else torch.zeros(0)


class PriorTrainer:
    """Networks, optimisers and one training step of the StyleGAN2 prior."""

    def __init__(self, p: TrainPriorParams, seed: int, info: DistInfo, device: torch.device) -> None:
        self.p, self.info, self.device = p, info, device
        self.config = prior_config(p)
        torch.manual_seed(seed)  # identical initial weights on every rank
        self.generator = StyleGAN2GeneratorClean(**self.config).to(device)
        self.discriminator = StyleGAN2Discriminator(p.out_size, p.channel_multiplier, p.narrow).to(device)
        broadcast_module(self.generator, info)
        broadcast_module(self.discriminator, info)
        images_per_step = p.batch_size * info.world_size
        self.ema = EMA(self.generator, ema_decay(images_per_step, p.ema_half_life_images))
        self.base_lr = p.lr * p.lr_scale
        self.opt_g = generator_adam(self.generator, self.base_lr, p.equalized_lr, p.noise_inputs)
        self.d_lr = lazy_lr(self.base_lr, p.r1_interval)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.d_lr,
                                      betas=lazy_betas(ADAM_BETAS, p.r1_interval))
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if p.bf16 else nullcontext())
        self.sample_z = torch.randn(GRID_SAMPLES, p.num_style_feat,
                                    generator=torch.Generator().manual_seed(derive_seed(seed, "prior-samples") % 2**63))
        self.eval_z = eval_latents(seed, p.eval_samples, p.num_style_feat)
        # What D sees, real and fake alike (identity when train_prior.diffaugment is ''); own seeded RNG per rank.
        self.augment = DiffAugment(p.diffaugment, derive_seed(seed, "prior-diffaugment", info.rank))

    def state_dict(self) -> dict:
        return {"config": self.config, "generator": self.generator.state_dict(),
                "discriminator": self.discriminator.state_dict(), "ema": self.ema.model.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "diffaugment": self.augment.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        check_resume_config(state, self.config)
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.ema.model.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if "diffaugment" in state:
            self.augment.load_state_dict(state["diffaugment"])

    def step(self, batch: dict, step: int) -> dict[str, Tensor]:
        p, g, d = self.p, self.generator, self.discriminator
        factor = lr_at(step, 1.0, p.lr_milestones, p.lr_gamma)
        set_lr(self.opt_g, self.base_lr * factor)
        set_lr(self.opt_d, self.d_lr * factor)
        real = batch["gt"].to(self.device, non_blocking=True)
        n = real.shape[0]

        # Discriminator: real -> 1, fake -> 0; lazy R1 on reals.
        requires_grad(g, False)
        requires_grad(d, True)
        with torch.no_grad(), self.autocast:
            fake, _ = g(mixed_latents(g, n, p.mixing_prob, self.device))
        with self.autocast:
            fake_logits, real_logits = d(self.augment(fake.detach())).float(), d(self.augment(real)).float()
        d_loss = discriminator_loss(real_logits, fake_logits)
        d.zero_grad(set_to_none=True)
        d_loss.backward()
        losses: dict[str, Tensor] = {"d_gan": d_loss.detach(), "real_score": real_logits.detach().mean(),
                                     "fake_score": fake_logits.detach().mean()}
        if p.r1_weight > 0 and step % p.r1_interval == 0:
            real_r1 = real.detach().requires_grad_(True)
            with self.autocast:
                logits = d(self.augment(real_r1)).float()  # R1 through the augmentation, w.r.t. the real
            penalty = r1_penalty(logits, real_r1)
            (lazy_r1_loss(penalty, p.r1_weight, p.r1_interval) + 0 * logits[0]).sum().backward()
            losses["r1"] = penalty.detach()
        average_gradients(list(d.parameters()), self.info)
        self.opt_d.step()

        # Generator: non-saturating loss.
        requires_grad(g, True)
        requires_grad(d, False)
        with self.autocast:
            fake, _ = g(mixed_latents(g, n, p.mixing_prob, self.device))
            g_loss = generator_loss(d(self.augment(fake)).float())
        g.zero_grad(set_to_none=True)
        g_loss.backward()
        average_gradients(list(g.parameters()), self.info)
        self.opt_g.step()
        images = p.batch_size * self.info.world_size
        self.ema.update(g, ema_decay(images, p.ema_half_life_images, images * step, p.ema_rampup))
        losses["g_gan"] = g_loss.detach()
        losses["lr"] = torch.tensor(self.base_lr * factor)
        return losses

    def samples(self, z: Tensor | None = None, noise_off: bool = False) -> Tensor:
        """The EMA generator's fixed samples (default: the grid's latents), see render_samples."""
        return render_samples(self.ema.model, self.sample_z if z is None else z, noise_off, self.device)


class _FaceCheckpoints:
    """The face measurement of the prior's samples at its sample checkpoints (main rank only)."""

    @classmethod
    def start(cls, p: TrainPriorParams, seed: int, shards_dir: Path, records: list[dict], work: Path,
              start_step: int) -> _FaceCheckpoints | None:
        """The measurement, or None (recorded in prior_reference.json) when the train split is too small for it."""
        # Real train faces in their stored order, unflipped, downscaled to the prior's resolution as training sees
        # them; twice the sample count so that two disjoint halves give the FD floor at the same n.
        stream = ShardStream(shards_dir, records, SampleRecipe(seed=seed, out_size=p.out_size, flip_prob=0.0),
                             shuffle_buffer=1)
        available = stream.samples_per_epoch()
        if available < MIN_REAL_FACES:
            reason = (f"only {available} train face(s); the face measurement needs at least {MIN_REAL_FACES} "
                      "for its real-face reference")
            log.warning("train_prior: %s: skipped", reason)
            write_json_atomic(work / REFERENCE_JSON, {"skipped": reason, "eval_samples": p.eval_samples})
            return None
        return cls(p, stream, min(2 * p.eval_samples, available), work, start_step)

    def __init__(self, p: TrainPriorParams, stream: ShardStream, real_count: int, work: Path,
                 start_step: int) -> None:
        started = time.monotonic()
        self.measure = FaceMeasure(real_faces(iter(stream), real_count))
        self.reference_path = work / REFERENCE_JSON
        self.reference = {"real_faces": self.measure.reference, "eval_samples": p.eval_samples,
                          "latents": "derive_seed(seed, 'prior-eval', 'latents'), EMA generator, fixed noise",
                          "claim": CLAIM, "setup_seconds": round(time.monotonic() - started, 2),
                          "seconds_per_checkpoint": []}
        self.log = MetricsLog(work / METRICS_CSV, start_step)

    def record(self, step: int, trainer: PriorTrainer) -> None:
        started = time.monotonic()
        row = self.measure.measure(step, to_uint8(trainer.samples(trainer.eval_z)),
                                   to_uint8(trainer.samples(trainer.eval_z, noise_off=True)))
        self.log.write(row)
        seconds = round(time.monotonic() - started, 2)
        self.reference["seconds_per_checkpoint"].append(seconds)
        write_json_atomic(self.reference_path, self.reference)
        log.info("train_prior: step %d: face-detection rate %.3f [%.3f, %.3f] (noise off %.3f; real faces %.3f), "
                 "dlib FD %.4g (noise off %.4g; real-vs-real %.4g), %d samples, %.1f s", step, row["detection_rate"],
                 row["ci_low"], row["ci_high"], row[f"detection_rate{NOISE_OFF}"],
                 self.measure.reference["detection_rate"], row["fd_dlib"], row[f"fd_dlib{NOISE_OFF}"],
                 self.measure.reference["fd_dlib"], row["n_samples"], seconds)


def convert_official(p: TrainPriorParams, work: Path) -> dict:
    """Load `p.official_weights` strictly (naming every missing/unexpected/mis-shaped key) and write it as
    prior.pth (+ losses_active.json saying so); returns the generator config."""
    from dlfp.models.checkpoints import load_into

    config = prior_config(p)
    generator = StyleGAN2GeneratorClean(**config)
    load_into(generator, p.official_weights)  # strict: names every missing/unexpected/mis-shaped key
    save_prior(work / PRIOR_FILE, generator, config)
    write_json_atomic(work / LOSSES_ACTIVE, {"mode": "official_weights", "source": str(p.official_weights),
                                             "config": config})
    return config


class PriorTraining(TrainingJob):
    """The prior for dlfp.train.engine.run.run_training: PriorTrainer on the train shards, sample grids (and the face
    measurement) at step 0 and every sample step, prior.pth from the EMA generator at the end."""

    stage = "train_prior"
    loss_columns = LOSS_COLUMNS

    def __init__(self, params: Params, shards_dir: Path) -> None:
        self.params, self.section, self.seed = params, params.train_prior, params.seed
        self.shards_dir = Path(shards_dir)

    def build(self, info: DistInfo) -> PriorTrainer:
        return PriorTrainer(self.section, self.seed, info, info.device)

    def provenance_params(self, trainer: PriorTrainer) -> dict[str, object]:
        return provenance_params(self.params, self.shards_dir)

    def sample_recipe(self, trainer: PriorTrainer) -> SampleRecipe:
        return SampleRecipe(seed=self.seed, out_size=self.section.out_size)

    def start(self, trainer: PriorTrainer, work: Path, info: DistInfo, start_step: int, records: list[dict],
              loss_log: LossLog | None) -> Callable[[int], None]:
        p = self.section
        if info.is_main:
            write_json_atomic(work / LOSSES_ACTIVE, {
                "mode": "trained", "config": trainer.config,
                "terms": {"gan": "non-saturating logistic", "r1": {"weight": p.r1_weight, "interval": p.r1_interval},
                          "path_length": "off (optional StyleGAN2 regulariser, skipped)",
                          "style_mixing": p.mixing_prob,
                          "diffaugment": {"policy": p.diffaugment or "off", "seed": trainer.augment.seed}},
                "ema_decay": trainer.ema.decay, "ema_rampup": p.ema_rampup, "lr": trainer.base_lr,
                "generator_lr": "equalized (StyleGAN2 per-weight scales, mapping x0.01)" if p.equalized_lr
                else "one lr",
                "noise_inputs": "learned strengths" if p.noise_inputs else "off (strengths fixed at 0)",
                "d_lr": trainer.d_lr,
                "batch_size": p.batch_size, "world_size": info.world_size, "bf16": p.bf16,
                "device": str(info.device)})

        face_measure = None
        if info.is_main and p.eval_samples > 0:
            face_measure = _FaceCheckpoints.start(p, self.seed, self.shards_dir, records, work, start_step)

        def sample_checkpoint(step: int) -> None:
            save_image_grid(work / SAMPLES_DIR / f"step-{step:06d}.png", list(trainer.samples().split(8)))
            if face_measure is not None:
                face_measure.record(step, trainer)

        if info.is_main and start_step == 0:
            sample_checkpoint(0)  # the initialisation: where the curves start

        def on_step_end(step: int) -> None:
            if info.is_main and (step % p.sample_every == 0 or step == p.iters):
                sample_checkpoint(step)

        return on_step_end

    def save(self, trainer: PriorTrainer, work: Path) -> None:
        save_prior(work / PRIOR_FILE, trainer.ema.model, trainer.config)
