"""Restorer registry: what turns a batch of LQ test faces into restored faces of the same size.

- `lq`: the LQ as it is (the degraded input; the lower bound every restorer must beat).
- `bicubic`: a bicubic-upsampling baseline from the low-resolution image. The pairs' LQ is already back at GT
  size (the degradation's own bilinear resize); we bring it down to the size it had after the degradation's
  downscale step (`degradation.lq_size`, logged per sample) with area interpolation, then up to GT size with
  bicubic interpolation. It shows what a plain interpolator makes of the same information.
- `gfpgan`: GFPGANv1Clean from a checkpoint (dl-fp's or the official v1.3/v1.4; architecture from
  params.restore.arch, else the train stage's <stem>.json beside the weights, else the checkpoint's tensor
  shapes), in deterministic mode (the decoder's stored noise maps), batched, run at the model's out_size with
  the input and output resized when the data has another size.

Every restorer takes uint8 RGB arrays (H, W, 3) plus each sample's metadata and returns uint8 arrays of the
same shapes; the baselines are pure functions of their input (byte-identical between runs).

Used by the test-set stage (dlfp.stages.restore) and by own photos (dlfp.photos.pipeline). A library: it imports
dlfp.io and dlfp.models, never a stage, train/ or photos/.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from dlfp.layout import LQ_RESTORER

DOWN_INTERPOLATION = cv2.INTER_AREA
UP_INTERPOLATION = cv2.INTER_CUBIC
ARCH_KEYS = ("out_size", "num_style_feat", "channel_multiplier", "num_mlp", "narrow", "different_w", "sft_half",
             "input_is_latent")
_DECODER = "stylegan_decoder."
_LEVEL_64_CONV = 6  # style_convs.6 is the up-sampling conv of the 64 px level (levels start at 8 px)
_CONST_CHANNELS = 512  # decoder channels at 4..32 px before `narrow`
_CHANNELS_64 = 256  # decoder channels at 64 px before channel_multiplier * narrow
LOSSES_ACTIVE = "losses_active.json"  # the train stage's record of its loss terms, beside its model
UNKNOWN = "unknown"


class RestorerUnavailable(RuntimeError):
    """A restorer cannot run here (its weights file is missing); the stage records it as 'not run'."""


@dataclass
class Restorer:
    """A named batch function plus what the receipt should say about it."""

    name: str
    restore_batch: Callable[[Sequence[np.ndarray], Sequence[Mapping]], list[np.ndarray]]
    batch_size: int = 1
    description: dict = field(default_factory=dict)


# -------------------------------------------------------------------------------------------- baselines
def restore_lq(lq: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(lq)


def restore_bicubic(lq: np.ndarray, lq_size: Sequence[int]) -> np.ndarray:
    """Area-downscale to the logged (width, height) after the degradation's downscale, bicubic back up."""
    height, width = lq.shape[:2]
    small_w, small_h = int(lq_size[0]), int(lq_size[1])
    if small_w < 1 or small_h < 1:
        raise ValueError(f"lq_size must be positive, got {list(lq_size)}")
    small = cv2.resize(lq, (small_w, small_h), interpolation=DOWN_INTERPOLATION)
    # cv2 saturates uint8 results of the bicubic overshoot to 0..255 (round to nearest).
    return cv2.resize(small, (width, height), interpolation=UP_INTERPOLATION)


def _lq_size(meta: Mapping) -> Sequence[int]:
    try:
        return meta["degradation"]["lq_size"]
    except (KeyError, TypeError):
        raise ValueError(f"sample {meta.get('id')!r}: json has no degradation.lq_size; rerun `dlfp degrade`") from None


def lq_restorer() -> Restorer:
    return Restorer(LQ_RESTORER, lambda images, metas: [restore_lq(image) for image in images],
                    batch_size=64, description={"kind": "the LQ input unchanged"})


def bicubic_restorer() -> Restorer:
    def run(images: Sequence[np.ndarray], metas: Sequence[Mapping]) -> list[np.ndarray]:
        return [restore_bicubic(image, _lq_size(meta)) for image, meta in zip(images, metas, strict=True)]

    return Restorer("bicubic", run, batch_size=64, description={
        "kind": "area downscale to degradation.lq_size, then bicubic upscale to GT size (OpenCV INTER_AREA, "
                "INTER_CUBIC)"})


# ----------------------------------------------------------------------------------------------- gfpgan
def infer_gfpgan_config(state: Mapping[str, object]) -> dict:
    """GFPGANv1Clean configuration read from a state_dict's tensor shapes (input_is_latent is not in them)."""
    try:
        levels = sum(1 for key in state if key.startswith("conv_body_down.") and key.endswith(".conv1.weight"))
        narrow = int(state[f"{_DECODER}constant_input.weight"].shape[1]) / _CONST_CHANNELS
        style_dim = int(state[f"{_DECODER}style_convs.0.modulated_conv.modulation.weight"].shape[1])
        channels_64 = int(state[f"{_DECODER}style_convs.{_LEVEL_64_CONV}.modulated_conv.weight"].shape[1])
        out_size = 2 ** (levels + 2)
        num_latent = (levels + 2) * 2 - 2
        unet_8 = int(state["condition_scale.0.0.weight"].shape[0])
        sft_out = int(state["condition_scale.0.2.weight"].shape[0])
        latent_features = int(state["final_linear.weight"].shape[0])
    except KeyError as error:
        raise ValueError(f"not a GFPGANv1Clean state_dict: no {error.args[0]!r}") from None
    num_mlp = sum(1 for key in state if key.startswith(f"{_DECODER}style_mlp.") and key.endswith(".weight"))
    return {
        "out_size": out_size,
        "num_style_feat": style_dim,
        "channel_multiplier": channels_64 / (_CHANNELS_64 * narrow),
        "num_mlp": num_mlp,
        "narrow": narrow,
        "different_w": latent_features == num_latent * style_dim,
        "sft_half": sft_out == unet_8,
    }


def sidecar_config(weights: Path) -> dict:
    """Constructor arguments from the train stage's <stem>.json beside the weights ({"config": {...}}), if any."""
    path = weights.with_suffix(".json")
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8")).get("config") or {}
    except (OSError, ValueError, AttributeError) as error:
        raise ValueError(f"{path}: unreadable model description beside {weights.name}: {error}") from None
    return {key: config[key] for key in ARCH_KEYS if key in config}


def training_losses(weights: Path) -> dict | str:
    """The feature networks the weights were trained with (identity and perceptual loss), or 'unknown: why'.

    Read from the train stage's losses_active.json, trusted only beside the train stage's own model (its
    <stem>.json sidecar is there too); official or foreign weights carry no such record. The evaluate stage uses
    it to say when the identity metric scores a model with the network it was trained against.
    """
    path = weights.parent / LOSSES_ACTIVE
    if not path.is_file() or not weights.with_suffix(".json").is_file():
        return f"{UNKNOWN}: no train-stage {LOSSES_ACTIVE} and {weights.with_suffix('.json').name} beside " \
               f"{weights.name} (official or foreign weights)"
    try:
        terms = json.loads(path.read_text(encoding="utf-8"))["terms"]
        return {"source": str(path), **{f"{term}_loss": {"weight": terms[term].get("weight"),
                                                         "network": terms[term].get("network")}
                                        for term in ("identity", "perceptual")}}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: unreadable loss record beside {weights.name}: {error}") from None


def gfpgan_restorer(weights: Path | str, arch: Mapping[str, object] | None = None, batch_size: int = 4,
                    device: str = "auto", backend: str = "torch", threads: int = 0,
                    weights_sha256: str | None = None) -> Restorer:
    """GFPGANv1Clean in deterministic mode; RestorerUnavailable when the weights file is missing.

    `backend` (dlfp.inference: torch | openvino | auto) runs the network; the description records the one that
    really ran. OpenVINO's compiled model is cached under $DLFP_CACHE/openvino, keyed by the weights' sha256
    (`weights_sha256` when the caller already has it). `threads`: OpenVINO's CPU threads (0: the plugin's choice).
    """
    import torch
    import torch.nn.functional as F

    from dlfp import inference
    from dlfp.devices import resolve_device
    from dlfp.io.images import MAX_8BIT, resize_for_model
    from dlfp.models.checkpoints import WeightsMissingError, check_state_dict, read_state_dict
    from dlfp.models.gfpgan import GFPGANv1Clean

    weights = Path(weights)
    try:
        state = read_state_dict(weights)
    except WeightsMissingError as error:
        raise RestorerUnavailable(f"{weights} missing: {error}") from None
    config = {**infer_gfpgan_config(state), "input_is_latent": True}
    config.update(sidecar_config(weights))
    overrides = {key: value for key, value in (arch or {}).items() if value is not None}
    config.update(overrides)
    model = GFPGANv1Clean(**config)  # type: ignore[arg-type]
    check_state_dict(model, state, str(weights))
    model.load_state_dict(state, strict=True)
    del state
    device = str(resolve_device(device))  # a str: the receipt records it
    model.requires_grad_(False).eval().to(device)
    model.fixed_noise = True  # deterministic: the checkpoint's stored noise maps, not fresh noise
    out_size = int(config["out_size"])
    chosen = inference.resolve_backend(backend, device)
    if chosen == "openvino":
        from dlfp.io.hashing import file_digest
        from dlfp.models.weights_cache import cache_dir

        # Only OpenVINO needs the weights' digest (its cache key): torch never reads the file twice.
        forward = inference.openvino_forward(model, weights_sha256 or file_digest(weights), out_size, threads,
                                             cache_dir())
    else:
        forward = inference.torch_forward(model)

    def run(images: Sequence[np.ndarray], metas: Sequence[Mapping]) -> list[np.ndarray]:
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for position, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(position)
        results: list[np.ndarray | None] = [None] * len(images)
        with torch.inference_mode():
            for shape, positions in by_shape.items():
                # The same resampling the model saw in training (area when shrinking), not a second resizer.
                inputs = [resize_for_model(images[p], out_size) for p in positions]
                batch = torch.from_numpy(np.stack(inputs)).to(device)
                x = batch.permute(0, 3, 1, 2).float().div_(MAX_8BIT / 2).sub_(1.0)  # [-1, 1]
                out = forward(x).float().clamp_(-1.0, 1.0)
                if shape[:2] != (out_size, out_size):
                    out = F.interpolate(out, shape[:2], mode="bilinear", align_corners=False, antialias=True)
                pixels = out.add_(1.0).mul_(MAX_8BIT / 2).round_().clamp_(0, MAX_8BIT).to(torch.uint8)
                pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
                for row, position in enumerate(positions):
                    results[position] = np.ascontiguousarray(pixels[row])
        return results  # type: ignore[return-value]

    description = {"kind": "GFPGANv1Clean, deterministic (stored noise maps)", "weights": str(weights),
                   "arch": {key: config[key] for key in ARCH_KEYS}, "arch_from_params": sorted(overrides),
                   "device": device, **inference.backend_record(chosen),
                   "resize": "in: dlfp.io.images.resize_for_model (as in training); out: bilinear (antialiased) back",
                   "training_losses": training_losses(weights)}
    return Restorer("gfpgan", run, batch_size=batch_size, description=description)


# --------------------------------------------------------------------------------------------- registry
def build_restorer(name: str, *, weights: Path | str | None = None, arch: Mapping[str, object] | None = None,
                   batch_size: int = 4, device: str = "auto", backend: str = "torch", threads: int = 0) -> Restorer:
    """The registry: a restorer by name (RestorerUnavailable when it cannot run here)."""
    if name == LQ_RESTORER:
        return lq_restorer()
    if name == "bicubic":
        return bicubic_restorer()
    if name == "gfpgan":
        if weights is None:
            raise RestorerUnavailable("no weights path given for gfpgan")
        return gfpgan_restorer(weights, arch, batch_size, device, backend=backend, threads=threads)
    raise ValueError(f"unknown restorer {name!r}; choose from {LQ_RESTORER}, bicubic, gfpgan")


def timed(restorer: Restorer, images: Sequence[np.ndarray], metas: Sequence[Mapping]) -> tuple[list, float]:
    """Restore a batch and return it with the seconds per image (batch time / batch size)."""
    started = time.perf_counter()
    restored = restorer.restore_batch(images, metas)
    return restored, (time.perf_counter() - started) / max(len(images), 1)
