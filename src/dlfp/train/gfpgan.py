"""GFP-GAN (GFPGANv1Clean) on the StyleGAN2 prior, with the published losses: its trainer, its validation and
what run_training needs to train it (`GFPGANTraining`).

The decoder is initialised from prior.pth, or randomly for the prior ablation (train.decoder_init), and frozen
unless train.fix_decoder is false. LQ inputs are made on the fly from the train shards with the `train.preset`
degradation (one preset, or a mixture). Every `train.val_every` steps the EMA generator restores the fixed
`train.val_preset` pairs of the **val** split (deterministic noise; test pairs are never read here, and a test
sample stops the run) and validation.csv gets PSNR and the identity match rate of the output and of the LQ input
(the baseline to beat), both at the model's resolution. The stage that runs it is dlfp.stages.train (its outputs are
listed there).

May import dlfp.train.engine, dlfp.train.data, dlfp.train.prior (load_prior), models, losses and io; never a stage.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dlfp.io.atomic import write_json_atomic
from dlfp.io.hashing import file_digest
from dlfp.io.images import decode_png_bytes, resize_for_model
from dlfp.layout import GFPGAN_FILE as MODEL_FILE
from dlfp.losses.component import COMPONENTS, component_style_loss, crop_components, crop_sizes
from dlfp.losses.gan import discriminator_loss, generator_loss, lazy_betas, lazy_r1_loss, r1_penalty
from dlfp.losses.identity import IdentityEmbedder, identity_loss, load_identity_embedder
from dlfp.losses.perceptual import DlibFeatures, PerceptualLoss, feature_losses, select_feature_network
from dlfp.losses.pixel import l1_loss, pyramid_loss
from dlfp.models.checkpoints import save_official
from dlfp.models.components import FacialComponentDiscriminator
from dlfp.models.dlib_resnet import MATCH_THRESHOLD, load_dlib_resnet
from dlfp.models.gfpgan import GFPGANv1Clean, equalized_lr_multipliers
from dlfp.models.stylegan2 import StyleGAN2Discriminator
from dlfp.params import Params, TrainParams
from dlfp.shards import streamed as streams
from dlfp.shards.format import VAL_SPLIT, pair_presets, require_split
from dlfp.shards.local import iter_samples, read_index
from dlfp.train.data import SampleRecipe, to_tensor
from dlfp.train.engine.checkpoint import check_resume_config, flatten_params, result_params
from dlfp.train.engine.distributed import DistInfo, average_gradients, broadcast_module
from dlfp.train.engine.ema import EMA, ema_decay
from dlfp.train.engine.logging import LossLog, append_csv_row, save_image_grid, truncate_csv_rows
from dlfp.train.engine.loop import adam_with_lr_multipliers, lr_at, requires_grad, set_lr
from dlfp.train.engine.run import TrainingJob
from dlfp.train.prior import load_prior

log = logging.getLogger(__name__)

CONFIG_FILE = "gfpgan.json"
LOSSES_ACTIVE = "losses_active.json"
VALIDATION_CSV = "validation.csv"
SAMPLES_DIR = "samples"
GRID_SAMPLES = 8
VAL_BATCH = 16
G_BETAS = (0.0, 0.99)
D_BETAS = (0.0, 0.99)  # raised to the lazy-R1 power
COMPONENT_BETAS = (0.9, 0.99)
TERMS = ["pixel", "pyramid", "perceptual", "perceptual_style", "gan", "component_gan", "component_style",
         "identity"]
LOSS_COLUMNS = [*TERMS, "g_total", "g_grad_norm", "d_gan", "r1", "d_component", "lr"]
VALIDATION_COLUMNS = ["step", "pairs", "psnr", "psnr_lq", "identity_match", "identity_match_lq",
                      "identity_distance", "identity_distance_lq"]


def gfpgan_config(prior_config: dict) -> dict:
    """GFPGANv1Clean constructor arguments matching the prior (clean layout, release switches)."""
    return {"out_size": prior_config["out_size"], "num_style_feat": prior_config["num_style_feat"],
            "channel_multiplier": prior_config["channel_multiplier"], "num_mlp": prior_config["num_mlp"],
            "narrow": prior_config["narrow"], "input_is_latent": True, "different_w": True, "sft_half": True}


class GFPGANTrainer:
    """Restoration network, the three kinds of discriminators, optimisers, loss networks and one step."""

    def __init__(self, p: TrainParams, prior_state: dict, prior_cfg: dict, seed: int, info: DistInfo,
                 device: torch.device, feature_net: nn.Module | None, identity: IdentityEmbedder | None) -> None:
        self.p, self.info, self.device = p, info, device
        self.config = gfpgan_config(prior_cfg)
        size = self.config["out_size"]
        torch.manual_seed(seed)  # identical initial weights on every rank
        self.net_g = GFPGANv1Clean(**self.config, fix_decoder=p.fix_decoder).to(device)
        if p.decoder_init == "prior":
            self.net_g.stylegan_decoder.load_state_dict(prior_state, strict=True)
        self.net_d = StyleGAN2Discriminator(size, prior_cfg["channel_multiplier"], prior_cfg["narrow"]).to(device)
        self.net_c = nn.ModuleDict({name: FacialComponentDiscriminator() for name in COMPONENTS}).to(device)
        for module in (self.net_g, self.net_d, self.net_c):
            broadcast_module(module, info)
        self.ema = EMA(self.net_g, ema_decay(p.batch_size * info.world_size, p.ema_half_life_images))
        self.base_lr = p.lr * p.lr_scale
        multipliers = equalized_lr_multipliers(self.net_g) if p.equalized_lr else {}
        self.opt_g = adam_with_lr_multipliers(self.net_g.named_parameters(), self.base_lr, multipliers, G_BETAS)
        self.opt_d = torch.optim.Adam(self.net_d.parameters(), lr=self.base_lr,
                                      betas=lazy_betas(D_BETAS, p.r1_interval))
        self.opt_c = torch.optim.Adam(self.net_c.parameters(), lr=self.base_lr, betas=COMPONENT_BETAS)
        self.crop_sizes = crop_sizes(size)
        self.feature_net, self.identity = feature_net, identity
        self.perceptual = PerceptualLoss(feature_net) if feature_net is not None else None
        # dlib for both perceptual and identity: one pass gives the feature maps and the embedding.
        self.shared_dlib = (isinstance(feature_net, DlibFeatures) and identity is not None
                            and identity.kind == "dlib")
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if p.bf16 else nullcontext()
        w = p.weights
        self.use_components = w.component_gan > 0 or w.component_style > 0

    # -- checkpoint state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"config": self.config, "net_g": self.net_g.state_dict(), "net_d": self.net_d.state_dict(),
                "net_c": self.net_c.state_dict(), "ema": self.ema.model.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "opt_c": self.opt_c.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        check_resume_config(state, self.config)
        for name in ("net_g", "net_d", "net_c", "opt_g", "opt_d", "opt_c"):
            getattr(self, name).load_state_dict(state[name])
        self.ema.model.load_state_dict(state["ema"])

    # -- losses -----------------------------------------------------------------------------------------------
    def _feature_terms(self, out: Tensor, gt: Tensor) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        w = self.p.weights
        if self.shared_dlib and (w.perceptual > 0 or w.perceptual_style > 0 or w.identity > 0):
            layers = (*self.feature_net.layer_weights, "embedding")
            net = self.feature_net.network
            out_feats = net.features(out, layers=layers, frame="ffhq", value_range=(-1, 1))
            with torch.no_grad():
                gt_feats = net.features(gt, layers=layers, frame="ffhq", value_range=(-1, 1))
            terms["perceptual"], terms["perceptual_style"] = feature_losses(
                out_feats, gt_feats, self.feature_net.layer_weights)
            terms["identity"] = identity_loss(out_feats["embedding"], gt_feats["embedding"])
            return terms
        if self.perceptual is not None and (w.perceptual > 0 or w.perceptual_style > 0):
            terms["perceptual"], terms["perceptual_style"] = self.perceptual(out, gt)
        if self.identity is not None and w.identity > 0:
            with torch.no_grad():
                gt_embedding = self.identity(gt)
            terms["identity"] = identity_loss(self.identity(out), gt_embedding)
        return terms

    def step(self, batch: dict, step: int) -> dict[str, Tensor]:
        p, w = self.p, self.p.weights
        factor = lr_at(step, 1.0, p.lr_milestones, p.lr_gamma)
        for opt in (self.opt_g, self.opt_d, self.opt_c):
            set_lr(opt, self.base_lr * factor)
        lq = batch["lq"].to(self.device, non_blocking=True)
        gt = batch["gt"].to(self.device, non_blocking=True)
        boxes = {k: v.to(self.device) for k, v in batch["boxes"].items()} if "boxes" in batch else None

        # ---- generator
        requires_grad(self.net_d, False)
        requires_grad(self.net_c, False)
        with self.autocast:
            out, rgbs = self.net_g(lq)
        out = out.float()
        terms: dict[str, Tensor] = {"pixel": l1_loss(out, gt)}
        weights = {name: getattr(w, name) for name in TERMS}
        weights["pyramid"] = w.pyramid if step <= w.pyramid_until else w.pyramid_after
        if weights["pyramid"] > 0:
            terms["pyramid"] = pyramid_loss([r.float() for r in rgbs], gt)
        terms.update(self._feature_terms(out, gt))
        if w.gan > 0:
            with self.autocast:
                terms["gan"] = generator_loss(self.net_d(out).float())
        crops_out = crops_gt = None
        if self.use_components and boxes is not None:
            crops_out = crop_components(out, boxes, self.crop_sizes)
            crops_gt = crop_components(gt, boxes, self.crop_sizes)
            comp_gan, comp_style = out.new_zeros(()), out.new_zeros(())
            for name in COMPONENTS:
                logits, fake_feats = self.net_c[name](crops_out[name], return_feats=True)
                comp_gan = comp_gan + generator_loss(logits)
                if w.component_style > 0:
                    with torch.no_grad():
                        _, real_feats = self.net_c[name](crops_gt[name], return_feats=True)
                    comp_style = comp_style + component_style_loss(fake_feats, real_feats)
            terms["component_gan"], terms["component_style"] = comp_gan, comp_style
        total = sum(weights[name] * value for name, value in terms.items())
        self.net_g.zero_grad(set_to_none=True)
        total.backward()
        trainable = [q for q in self.net_g.parameters() if q.requires_grad]
        average_gradients(trainable, self.info)
        grad_norm = None
        if p.grad_clip_norm is not None:  # after averaging: every rank clips the same gradient
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, p.grad_clip_norm)
        self.opt_g.step()
        images = p.batch_size * self.info.world_size
        self.ema.update(self.net_g, ema_decay(images, p.ema_half_life_images, images * step, p.ema_rampup))
        losses = {name: value.detach() * weights[name] for name, value in terms.items()}
        losses["g_total"] = total.detach()
        if grad_norm is not None:
            losses["g_grad_norm"] = grad_norm.detach()

        # ---- global discriminator (+ lazy R1)
        if w.gan > 0:
            requires_grad(self.net_d, True)
            with self.autocast:
                fake_logits, real_logits = self.net_d(out.detach()).float(), self.net_d(gt).float()
            d_loss = discriminator_loss(real_logits, fake_logits)
            self.net_d.zero_grad(set_to_none=True)
            d_loss.backward()
            losses["d_gan"] = d_loss.detach()
            if p.r1_weight > 0 and step % p.r1_interval == 0:
                real = gt.detach().requires_grad_(True)
                with self.autocast:
                    logits = self.net_d(real).float()
                penalty = r1_penalty(logits, real)
                (lazy_r1_loss(penalty, p.r1_weight, p.r1_interval) + 0 * logits[0]).sum().backward()
                losses["r1"] = penalty.detach()
            average_gradients(list(self.net_d.parameters()), self.info)
            self.opt_d.step()

        # ---- component discriminators
        if crops_out is not None and w.component_gan > 0:
            requires_grad(self.net_c, True)
            d_comp = out.new_zeros(())
            for name in COMPONENTS:
                fake_logits, _ = self.net_c[name](crops_out[name].detach())
                real_logits, _ = self.net_c[name](crops_gt[name])
                d_comp = d_comp + discriminator_loss(real_logits, fake_logits)
            self.net_c.zero_grad(set_to_none=True)
            d_comp.backward()
            average_gradients(list(self.net_c.parameters()), self.info)
            self.opt_c.step()
            losses["d_component"] = d_comp.detach()
        losses["lr"] = torch.tensor(self.base_lr * factor)
        return losses


# ---------------------------------------------------------------------------------------------- validation
def load_val_pairs(pairs_dir: Path, preset: str, size: int, count: int | None = None
                   ) -> tuple[Tensor, Tensor, list]:
    """Fixed val pairs of a preset, resized to the model's resolution: (lq, gt) in [-1, 1], keys.

    Validation steers the recipe (learning rate, steps, clipping), so it reads the val split only; every pair's
    recorded split is checked, so pointing this at test pairs stops the run."""
    presets = pair_presets(read_index(pairs_dir), VAL_SPLIT)
    if preset not in presets:
        raise ValueError(f"{pairs_dir}: no val pairs for preset {preset!r} (have {sorted(presets)})")
    lq, gt, keys = [], [], []
    for sample in iter_samples(pairs_dir, presets[preset]["shards"]):
        require_split(json.loads(sample["json"]), VAL_SPLIT, f"{pairs_dir}: validation pairs")
        lq.append(to_tensor(resize_for_model(decode_png_bytes(sample["lq.png"]), size)))
        gt.append(to_tensor(resize_for_model(decode_png_bytes(sample["gt.png"]), size)))
        keys.append(sample["__key__"])
        if count is not None and len(keys) >= count:
            break
    if not keys:
        raise ValueError(f"{pairs_dir}: preset {preset!r} has no val pairs")
    return torch.stack(lq), torch.stack(gt), keys


def quantise(images: Tensor) -> Tensor:
    """[-1, 1] -> 8-bit values as float (what a PNG of the result would hold)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round()


def psnr_8bit(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR (dB) of 8-bit images given in [-1, 1]; identical images count as 100 dB."""
    mse = (quantise(a) - quantise(b)).pow(2).flatten(1).mean(1)
    return torch.where(mse > 0, 10 * torch.log10(255.0**2 / mse.clamp_min(1e-12)), torch.full_like(mse, 100.0))


class Validator:
    """PSNR and dlib identity match rate of restored vs LQ-input pairs against GT."""

    def __init__(self, lq: Tensor, gt: Tensor, embedder: nn.Module, device: torch.device) -> None:
        self.lq, self.gt, self.device = lq, gt, device
        self.embedder = embedder
        self.gt_embedding = self._embed(gt)
        self.baseline = self._metrics(lq)

    @torch.no_grad()
    def _embed(self, images: Tensor) -> Tensor:
        chunks = [self.embedder.embed(c.to(self.device), frame="ffhq", value_range=(-1, 1)).cpu()
                  for c in images.split(VAL_BATCH)]
        return torch.cat(chunks)

    def _metrics(self, images: Tensor) -> dict[str, float]:
        distance = (self._embed(quantise(images) / 127.5 - 1) - self.gt_embedding).norm(dim=1)
        return {"psnr": float(psnr_8bit(images, self.gt).mean()),
                "identity_match": float((distance < MATCH_THRESHOLD).float().mean()),
                "identity_distance": float(distance.mean())}

    @torch.no_grad()
    def restore(self, model: GFPGANv1Clean) -> Tensor:
        was_fixed, was_training = model.fixed_noise, model.training
        model.fixed_noise = True
        model.eval()
        out = torch.cat([model(c.to(self.device), return_rgb=False)[0].float().clamp(-1, 1).cpu()
                         for c in self.lq.split(VAL_BATCH)])
        model.fixed_noise = was_fixed
        model.train(was_training)
        return out

    def __call__(self, model: GFPGANv1Clean) -> dict[str, float]:
        metrics = self._metrics(self.restore(model))
        return {"pairs": len(self.lq), **metrics,
                **{f"{k}_lq": v for k, v in self.baseline.items()}}


def provenance_params(params: Params, shards_dir: Path, prior_path: Path, pairs_dir: Path,
                      trainer: GFPGANTrainer) -> dict[str, object]:
    """Everything the trained model and its validation figures depend on, as dotted keys: the train section (less
    dlfp.train.engine.checkpoint.RESULT_NEUTRAL_KEYS), seed, data.size, the degrade preset used, the feature and
    identity networks really loaded (`auto` depends on the weights cache), and the digests of the inputs."""
    p = params.train
    presets = {name: params.degrade.presets[name].model_dump(mode="json") for name in p.presets}
    return {"seed": params.seed, "data.size": params.data.size,
            **result_params("train", p.model_dump(mode="json")),
            **flatten_params({"degrade": {"presets": presets}}),
            "resolved.perceptual_network": getattr(trainer.feature_net, "name", None),
            "resolved.identity_network": trainer.identity.kind if trainer.identity is not None else None,
            "inputs.shards_index_sha256": streams.index_digest(shards_dir),
            "inputs.prior_sha256": file_digest(prior_path),
            "inputs.pairs_index_sha256": streams.index_digest(pairs_dir)}


def _round(value: float) -> float | int:
    return value if isinstance(value, int) else round(float(value), 5)


def _losses_active(trainer: GFPGANTrainer, p: TrainParams, info: DistInfo, device: torch.device,
                   prior_path: Path) -> dict:
    """Every term's weight and the networks really used (for the report)."""
    w = p.weights
    feature = trainer.feature_net
    active = {
        "pixel": {"weight": w.pixel, "definition": "L1(output, GT)"},
        "pyramid": {"weight": w.pyramid, "after_step": w.pyramid_until, "weight_after": w.pyramid_after},
        "perceptual": {"weight": w.perceptual if feature is not None else 0.0,
                       "network": getattr(feature, "name", None), "source": getattr(feature, "source", None),
                       "layers": dict(feature.layer_weights) if feature is not None else None,
                       "note": None if feature is not None else "off: no feature network (asked for "
                                                                f"{p.perceptual_network!r})"},
        "perceptual_style": {"weight": w.perceptual_style if feature is not None else 0.0,
                             "definition": "L1 of Gram / (c h w) on the perceptual layers"},
        "gan": {"weight": w.gan, "loss": "non-saturating logistic", "r1": {"weight": p.r1_weight,
                                                                          "interval": p.r1_interval}},
        "component_gan": {"weight": w.component_gan, "crops": trainer.crop_sizes},
        "component_style": {"weight": w.component_style, "feature_weights": [0.5, 1.0]},
        "identity": {"weight": w.identity if trainer.identity is not None else 0.0,
                     "network": trainer.identity.kind if trainer.identity is not None else None,
                     "source": trainer.identity.source if trainer.identity is not None else None},
    }
    return {"terms": active, "config": trainer.config, "fix_decoder": p.fix_decoder, "prior": str(prior_path),
            "ema_decay": trainer.ema.decay, "ema_rampup": p.ema_rampup, "lr": trainer.base_lr,
            "batch_size": p.batch_size, "world_size": info.world_size,
            "grad_clip_norm": p.grad_clip_norm, "bf16": p.bf16, "device": str(device),
            "generator_lr": "equalized (GFPGANv1's per-weight scales, decoder mapping x0.01)" if p.equalized_lr
            else "one lr",
            "preset": p.preset, "decoder_init": p.decoder_init,
            "validation": {"split": VAL_SPLIT, "preset": p.val_preset, "identity_network": "dlib",
                           "resolution": trainer.config["out_size"],
                           "match_threshold": MATCH_THRESHOLD},
            "numpy": np.__version__}


class GFPGANTraining(TrainingJob):
    """GFP-GAN for dlfp.train.engine.run.run_training: GFPGANTrainer on degraded train shards, validation and sample
    grids on the fixed val pairs, gfpgan.pth (official format) and gfpgan.json at the end."""

    stage = "train"
    loss_columns = LOSS_COLUMNS

    def __init__(self, params: Params, shards_dir: Path, prior_path: Path, pairs_dir: Path) -> None:
        p = params.train
        unknown = [name for name in p.presets if name not in params.degrade.presets]
        if unknown:  # checked here, not in the schema: stages that do not train may keep fewer presets
            raise ValueError(f"train.preset: {', '.join(map(repr, unknown))} is not a degrade preset "
                             f"({', '.join(sorted(params.degrade.presets))})")
        self.params, self.section, self.seed = params, p, params.seed
        self.shards_dir, self.prior_path, self.pairs_dir = Path(shards_dir), Path(prior_path), Path(pairs_dir)
        self.validator: Validator | None = None
        self.last_validation: dict = {}
        self.val_ids: list = []

    def build(self, info: DistInfo) -> GFPGANTrainer:
        p, device = self.section, info.device
        prior_state, prior_cfg = load_prior(self.prior_path)
        if prior_cfg["out_size"] != self.params.data.size:  # the prior's size is the restorer's output size
            log.warning("train: the network's output (%d px, the prior's) is not data.size (%d px): evaluation "
                        "resizes it, which caps the detail it can return; set train_prior.out_size to data.size",
                        prior_cfg["out_size"], self.params.data.size)
        feature_net = select_feature_network(p.perceptual_network, device) \
            if (p.weights.perceptual > 0 or p.weights.perceptual_style > 0) else None
        identity = load_identity_embedder(p.identity_network, device, p.arcface_path) \
            if p.weights.identity > 0 else None
        return GFPGANTrainer(p, prior_state, prior_cfg, self.seed, info, device, feature_net, identity)

    def provenance_params(self, trainer: GFPGANTrainer) -> dict[str, object]:
        return provenance_params(self.params, self.shards_dir, self.prior_path, self.pairs_dir, trainer)

    def sample_recipe(self, trainer: GFPGANTrainer) -> SampleRecipe:
        presets = tuple(self.params.degrade.presets[name] for name in self.section.presets)
        return SampleRecipe(seed=self.seed, out_size=trainer.config["out_size"],
                            preset=presets[0] if isinstance(self.section.preset, str) else presets)

    def start(self, trainer: GFPGANTrainer, work: Path, info: DistInfo, start_step: int, records: list[dict],
              loss_log: LossLog | None) -> Callable[[int], None]:
        p, device = self.section, info.device
        if info.is_main:
            lq, gt, self.val_ids = load_val_pairs(self.pairs_dir, p.val_preset, trainer.config["out_size"],
                                                  p.val_count)
            identity = trainer.identity
            metric_net = identity.network if identity is not None and identity.kind == "dlib" \
                else load_dlib_resnet(device)
            self.validator = Validator(lq, gt, metric_net, device)
            write_json_atomic(work / LOSSES_ACTIVE, _losses_active(trainer, p, info, device, self.prior_path))
            truncate_csv_rows(work / VALIDATION_CSV, start_step)

        def on_step_end(step: int) -> None:
            validator = self.validator
            if not info.is_main:
                return
            if step % p.val_every == 0 or step == p.iters:
                self.last_validation = validator(trainer.ema.model)
                append_csv_row(work / VALIDATION_CSV, VALIDATION_COLUMNS,
                               [step, *(_round(self.last_validation[c]) for c in VALIDATION_COLUMNS[1:])])
                for name, value in self.last_validation.items():
                    loss_log.scalar(f"val/{name}", value, step)
                log.info("train: step %d validation %s", step, self.last_validation)
            if step % p.sample_every == 0 or step == p.iters:
                restored = validator.restore(trainer.ema.model)[:GRID_SAMPLES]
                save_image_grid(work / SAMPLES_DIR / f"step-{step:06d}.png",
                                [validator.lq[:GRID_SAMPLES], restored, validator.gt[:GRID_SAMPLES]])

        return on_step_end

    def save(self, trainer: GFPGANTrainer, work: Path) -> None:
        if not self.last_validation:
            self.last_validation = self.validator(trainer.ema.model)
        save_official(trainer.ema.model, work / MODEL_FILE)
        write_json_atomic(work / CONFIG_FILE, {
            "arch": "GFPGANv1Clean", "config": trainer.config, "value_range": [-1, 1],
            "input": f"RGB face aligned like FFHQ, resized to {trainer.config['out_size']} px (cv2.INTER_AREA when "
                     "shrinking)",
            "weights_key": "params_ema", "prior": str(self.prior_path)})

    def summary(self) -> dict:
        return {"validation": self.last_validation, "validation_ids": self.val_ids}
