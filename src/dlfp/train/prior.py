"""Stage `train_prior`: the StyleGAN2 facial prior (clean layout) trained from scratch on the train shards.

Non-saturating logistic loss, lazy R1 on the discriminator, style mixing, EMA generator; no path-length
regularisation (optional in StyleGAN2, skipped here and recorded in losses_active.json). With
`train_prior.official_weights` set, an official clean StyleGAN2 checkpoint is loaded strictly and written as
prior.pth instead of training.

Output (<out>): prior.pth ({'params_ema': generator EMA state_dict, 'config': constructor arguments},
weights_only-loadable), samples/step-NNNNNN.png (from step 0, the initialisation), losses.csv, losses_active.json,
receipt.json; with `train_prior.eval_samples` > 0 also prior_metrics.csv (face-detection rate and descriptor FD of
fixed samples at step 0 and every sample step) and prior_reference.json (the same measured on real train faces):
see dlfp.train.prior_metrics.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor

from dlfp.data import streams
from dlfp.io.atomic import atomic_path, write_json_atomic
from dlfp.io.hashing import derive_seed, file_digest
from dlfp.io.receipt import write_receipt
from dlfp.losses.gan import (
    discriminator_loss,
    generator_loss,
    lazy_betas,
    lazy_lr,
    lazy_r1_loss,
    r1_penalty,
)
from dlfp.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2GeneratorClean, equalized_lr_multipliers
from dlfp.params import Params, TrainPriorParams
from dlfp.train.data import Batches, SampleRecipe, ShardStream, train_records
from dlfp.train.diffaugment import DiffAugment
from dlfp.train.loop import (
    EMA,
    DistInfo,
    LoopConfig,
    LossLog,
    average_gradients,
    broadcast_module,
    check_resume_config,
    ema_decay,
    init_distributed,
    lr_at,
    rank_seed,
    requires_grad,
    resolve_device,
    result_params,
    resume_checkpoint,
    save_image_grid,
    seed_everything,
    set_lr,
    train_loop,
    training_provenance,
    work_folder,
)
from dlfp.train.prior_metrics import (
    CLAIM,
    METRICS_CSV,
    MIN_REAL_FACES,
    REFERENCE_JSON,
    FaceMeasure,
    MetricsLog,
    eval_latents,
    real_faces,
    to_uint8,
)

log = logging.getLogger(__name__)

PRIOR_FILE = "prior.pth"
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
    """Everything the trained prior depends on, as dotted keys (see dlfp.train.loop.RESULT_NEUTRAL_KEYS)."""
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
    with atomic_path(path) as tmp:
        torch.save({"params_ema": state, "config": config}, tmp)


def mixed_latents(generator: StyleGAN2GeneratorClean, batch: int, mixing_prob: float,
                  device: torch.device) -> list[Tensor]:
    """One z per sample, or two (style mixing) with probability mixing_prob."""
    count = 2 if mixing_prob > 0 and float(torch.rand(())) < mixing_prob else 1
    return [torch.randn(batch, generator.num_style_feat, device=device) for _ in range(count)]


def generator_adam(generator: StyleGAN2GeneratorClean, lr: float, equalized_lr: bool) -> torch.optim.Adam:
    """Adam on the generator: one lr, or (equalized_lr) one group per lr multiplier of equalized_lr_multipliers,
    each group keeping its "lr_mul" so that dlfp.train.loop.set_lr scales it with the schedule."""
    if not equalized_lr:
        return torch.optim.Adam(generator.parameters(), lr=lr, betas=ADAM_BETAS)
    multipliers = equalized_lr_multipliers(generator)
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, parameter in generator.named_parameters():
        groups.setdefault(multipliers[name], []).append(parameter)
    return torch.optim.Adam([{"params": params, "lr": lr * lr_mul, "lr_mul": lr_mul}
                             for lr_mul, params in groups.items()], lr=lr, betas=ADAM_BETAS)


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
        self.opt_g = generator_adam(self.generator, self.base_lr, p.equalized_lr)
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

    @torch.no_grad()
    def samples(self, z: Tensor | None = None) -> Tensor:
        """EMA generator on fixed z (default: the grid's) with its stored noise: comparable across checkpoints."""
        z = self.sample_z if z is None else z
        was_fixed = self.ema.model.fixed_noise
        self.ema.model.fixed_noise = True
        images = torch.cat([self.ema.model(chunk.to(self.device))[0].float().cpu()
                            for chunk in z.split(GRID_SAMPLES)]) if len(z) else torch.zeros(0)
        self.ema.model.fixed_noise = was_fixed
        return images


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
        row = self.measure.measure(step, to_uint8(trainer.samples(trainer.eval_z)))
        self.log.write(row)
        seconds = round(time.monotonic() - started, 2)
        self.reference["seconds_per_checkpoint"].append(seconds)
        write_json_atomic(self.reference_path, self.reference)
        log.info("train_prior: step %d: face-detection rate %.3f [%.3f, %.3f] (real faces %.3f), dlib FD %.4g "
                 "(real-vs-real %.4g), %d samples, %.1f s", step, row["detection_rate"], row["ci_low"],
                 row["ci_high"], self.measure.reference["detection_rate"], row["fd_dlib"],
                 self.measure.reference["fd_dlib"], row["n_samples"], seconds)


def _convert_official(p: TrainPriorParams, work: Path) -> dict:
    from dlfp.models.checkpoints import load_into

    config = prior_config(p)
    generator = StyleGAN2GeneratorClean(**config)
    load_into(generator, p.official_weights)  # strict: names every missing/unexpected/mis-shaped key
    save_prior(work / "prior.pth", generator, config)
    write_json_atomic(work / LOSSES_ACTIVE, {"mode": "official_weights", "source": str(p.official_weights),
                                             "config": config})
    return config


def run(params: Params, shards_dir: Path, out_dir: Path, *, stop_after: int | None = None) -> dict:
    """Train (or convert) the StyleGAN2 prior; writes <out>/prior.pth. See the module docstring."""
    started = time.monotonic()
    p = params.train_prior
    shards_dir, out_dir = Path(shards_dir), Path(out_dir)
    torch.set_num_threads(p.threads)
    info = init_distributed(p.device)
    device = resolve_device(p.device, info)
    with work_folder(out_dir, p.resume, info) as work:
        if p.official_weights:
            config = _convert_official(p, work)
            write_receipt(work, stage="train_prior", params_hash=params.section_hash("seed", "train_prior"),
                          seed=params.seed, counts={"steps": 0},
                          inputs={"official_weights": str(p.official_weights),
                                  "sha256": file_digest(p.official_weights)},
                          packages=("torch",), extra={"config": config})
            return {"out": str(out_dir), "mode": "official_weights", "config": config}
        summary = _train(params, shards_dir, work, info, device, stop_after)
        if info.is_main:
            write_receipt(work, stage="train_prior", params_hash=params.section_hash("seed", "train_prior"),
                          seed=params.seed, counts={"steps": summary["steps"],
                                                    "train_samples": summary["train_samples"]},
                          inputs={"shards": str(shards_dir),
                                  "shards_index_sha256": streams.index_digest(shards_dir)},
                          packages=("torch", "webdataset"),
                          extra={"config": summary["config"], "provenance": summary["provenance"]})
    summary.update(out=str(out_dir), seconds=round(time.monotonic() - started, 1))
    if info.is_main:
        print(f"train_prior: {summary['steps']} steps in {summary['seconds']} s -> {out_dir / PRIOR_FILE}")
    return summary


def _train(params: Params, shards_dir: Path, work: Path, info: DistInfo, device: torch.device,
           stop_after: int | None) -> dict:
    import torch.distributed as dist

    p = params.train_prior
    if info.distributed:
        dist.barrier()  # rank 0 has created (or cleared) the working folder
    trainer = PriorTrainer(p, params.seed, info, device)
    checkpoint, provenance = resume_checkpoint(work, info, p.resume,
                                               training_provenance(provenance_params(params, shards_dir)))
    start_step, data_state = 0, {"epoch": 0, "offset": 0}
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint["state"])
        start_step, data_state = checkpoint["step"], checkpoint["data"]
        log.info("train_prior: resuming at step %d", start_step)
    else:
        seed_everything(rank_seed(params.seed, info.rank))
    records = train_records(shards_dir)
    recipe = SampleRecipe(seed=params.seed, out_size=p.out_size)
    stream = ShardStream(shards_dir, records, recipe, rank=info.rank, world_size=info.world_size,
                         start_epoch=data_state["epoch"], start_offset=data_state["offset"],
                         shuffle_buffer=p.shuffle_buffer)
    batches = Batches(stream, p.batch_size, p.workers)
    if info.is_main:
        write_json_atomic(work / LOSSES_ACTIVE, {
            "mode": "trained", "config": trainer.config,
            "terms": {"gan": "non-saturating logistic", "r1": {"weight": p.r1_weight, "interval": p.r1_interval},
                      "path_length": "off (optional StyleGAN2 regulariser, skipped)",
                      "style_mixing": p.mixing_prob,
                      "diffaugment": {"policy": p.diffaugment or "off", "seed": trainer.augment.seed}},
            "ema_decay": trainer.ema.decay, "ema_rampup": p.ema_rampup, "lr": trainer.base_lr,
            "generator_lr": "equalized (StyleGAN2 per-weight scales, mapping x0.01)" if p.equalized_lr else "one lr",
            "d_lr": trainer.d_lr,
            "batch_size": p.batch_size, "world_size": info.world_size, "bf16": p.bf16, "device": str(device)})
    loss_log = LossLog(work, LOSS_COLUMNS, start_step, p.tensorboard) if info.is_main else None

    face_measure = None
    if info.is_main and p.eval_samples > 0:
        face_measure = _FaceCheckpoints.start(p, params.seed, shards_dir, records, work, start_step)

    def sample_checkpoint(step: int) -> None:
        save_image_grid(work / SAMPLES_DIR / f"step-{step:06d}.png", list(trainer.samples().split(8)))
        if face_measure is not None:
            face_measure.record(step, trainer)

    if info.is_main and start_step == 0:
        sample_checkpoint(0)  # the initialisation: where the curves start

    def on_step_end(step: int) -> None:
        if info.is_main and (step % p.sample_every == 0 or step == p.iters):
            sample_checkpoint(step)

    config = LoopConfig(total_steps=p.iters, checkpoint_every=p.checkpoint_every, start_step=start_step,
                        stop_after=stop_after, desc="train_prior", provenance=provenance)
    try:
        last = train_loop(trainer.step, batches, trainer.state_dict, work, config, info, loss_log, on_step_end)
    finally:
        if loss_log is not None:
            loss_log.close()
    if info.is_main:
        save_prior(work / PRIOR_FILE, trainer.ema.model, trainer.config)
        if not p.keep_checkpoints:
            import shutil

            shutil.rmtree(work / "checkpoints", ignore_errors=True)
    return {"steps": last, "train_samples": stream.samples_per_epoch(), "config": trainer.config,
            "provenance": {"hash": provenance["hash"], "history": provenance["history"]}}
