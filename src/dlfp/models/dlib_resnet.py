"""dlib's 128-D face-recognition ResNet in PyTorch, its conversion from the .dat file and its weight cache.

`DlibFaceResNet` is a faithful PyTorch port of dlib's 128-D face-recognition ResNet
(dlib_face_recognition_resnet_model_v1.dat, 99.38% on LFW at distance 0.6), converted from the file shipped
by the face-recognition-models package. dlib runs it on the CPU, one image at a time, without gradients;
the port gives a differentiable identity loss, a face perceptual feature extractor and a batched identity
metric. The converted state_dict is cached (sha256-checked against the source .dat and itself); no
converted weights are committed.

The .dat file is parsed by `dlib_resnet_dat` (no dlib needed); the chip frames the network reads (dlib's
5-point alignment, the fixed FFHQ frame) live in `dlfp.faces.chips`. Distances between descriptors are
metrics: `dlfp.metrics.identity`. May import torch, dlfp.io, dlfp.faces.chips and the other dlib model modules.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlfp.faces.chips import CHIP_SIZE, chip_to_image_from_landmarks, crop_ffhq_to_chip, warp_to_chip
from dlfp.io.atomic import write_json_atomic
from dlfp.io.hashing import file_digest
from dlfp.models.checkpoints import save_torch
from dlfp.models.dlib_files import FACE_RECOGNITION_RESNET, dlib_model_path
from dlfp.models.dlib_resnet_dat import DlibNet, LayerRecord, read_dlib_net
from dlfp.models.weights_cache import cache_dir

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# Constants of dlib's network and its preprocessing.

EMBEDDING_DIM = 128
INPUT_SCALE = 256.0  # dlib's input layer: (pixel - mean) / 256, pixels in 0..255
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)  # also read back from the .dat file
MATCH_THRESHOLD = 0.6  # dlib: same person when the euclidean distance is below 0.6
# sha256 of the .dat in face-recognition-models 0.3.0 (informative: any file with this layout converts)
KNOWN_DAT_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
CACHE_FORMAT = 1
CACHE_NAME = "dlib_face_resnet_v1"

# Layers `features` can return, from the input upwards.
FEATURE_LAYERS = ("stem", "level4", "level3", "level2", "level1", "level0", "embedding")

# ---------------------------------------------------------------------------------------------------------
# dlib's ResNet in PyTorch.


class Affine(nn.Module):
    """dlib's `affine` layer: batch norm folded into a per-channel scale and shift when the net was saved."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale[:, None, None] + self.shift[:, None, None]


def add_prev(a: Tensor, b: Tensor) -> Tensor:
    """dlib's add_prev: tensors of different channel count or size are zero-filled to the larger one."""
    if a.shape == b.shape:
        return a + b
    channels, height, width = (max(a.shape[d], b.shape[d]) for d in (1, 2, 3))

    def grow(t: Tensor) -> Tensor:  # zero padding at the end of channels, rows and columns
        return F.pad(t, (0, width - t.shape[3], 0, height - t.shape[2], 0, channels - t.shape[1]))

    return grow(a) + grow(b)


class ResidualBlock(nn.Module):
    """`ares` / `ares_down` of dlib's face model: conv-affine-relu-conv-affine + skip, then relu.

    The downsampling version uses a stride-2 3x3 conv without padding (dlib's default for stride 2) and a
    2x2 average pool on the skip; dlib's add_prev zero-fills the extra channels and the size mismatch.
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool) -> None:
        super().__init__()
        stride, padding = (2, 0) if downsample else (1, 1)
        self.downsample = downsample
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding)
        self.affine1 = Affine(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.affine2 = Affine(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        main = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        skip = F.avg_pool2d(x, 2, 2) if self.downsample else x
        return F.relu(add_prev(main, skip))

    def dlib_plan(self, prefix: str) -> list[tuple[str, str | None]]:
        plan = [("con", f"{prefix}.conv1"), ("affine", f"{prefix}.affine1"), ("relu", None),
                ("con", f"{prefix}.conv2"), ("affine", f"{prefix}.affine2")]
        if self.downsample:
            plan.append(("avg_pool", None))
        return plan + [("add_prev", None), ("relu", None)]


# (output channels, downsample first block, number of blocks) per level, from the input upwards:
# alevel4 .. alevel0 of dlib's dnn_face_recognition_ex.cpp.
LEVELS = (
    ("level4", 32, False, 3),
    ("level3", 64, True, 4),
    ("level2", 128, True, 3),
    ("level1", 256, True, 3),
    ("level0", 256, True, 1),
)
STEM_CHANNELS = 32


class DlibFaceResNet(nn.Module):
    """dlib's face-recognition ResNet (29 conv layers, 128-D output).

    Input: normalised chips (B, 3, 150, 150) = (RGB 0..255 - mean_rgb) / 256. Shapes through the net:
    stem 7x7/2 conv -> (B, 32, 72, 72), 3x3/2 max pool -> (B, 32, 35, 35); level4 (B, 32, 35, 35);
    level3 (B, 64, 17, 17); level2 (B, 128, 8, 8); level1 (B, 256, 4, 4) (3x3 main path zero-filled to the
    4x4 skip, as dlib does); level0 (B, 256, 2, 2); global mean -> fc without bias -> (B, 128).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean_rgb", torch.tensor(DLIB_MEAN_RGB, dtype=torch.float32))
        self.stem_conv = nn.Conv2d(3, STEM_CHANNELS, 7, 2, 0)
        self.stem_affine = Affine(STEM_CHANNELS)
        channels = STEM_CHANNELS
        for name, out_channels, downsample, count in LEVELS:
            blocks = [ResidualBlock(channels, out_channels, downsample)]
            blocks += [ResidualBlock(out_channels, out_channels, False) for _ in range(count - 1)]
            self.add_module(name, nn.Sequential(*blocks))
            channels = out_channels
        self.fc = nn.Linear(channels, EMBEDDING_DIM, bias=False)

    # -- the network ------------------------------------------------------------------------------------
    def normalize(self, images: Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> Tensor:
        """RGB images (B, 3, H, W) in `value_range` -> dlib's network input."""
        low, high = value_range
        pixels = (images - low) * (255.0 / (high - low))
        return (pixels - self.mean_rgb.to(images.dtype)[:, None, None]) / INPUT_SCALE

    def _trunk(self, x: Tensor, wanted: Iterable[str] = ()) -> tuple[Tensor, dict[str, Tensor]]:
        wanted = set(wanted)
        maps: dict[str, Tensor] = {}
        x = F.max_pool2d(F.relu(self.stem_affine(self.stem_conv(x))), 3, 2)  # (B, 32, 35, 35)
        if "stem" in wanted:
            maps["stem"] = x
        for name, *_ in LEVELS:
            x = getattr(self, name)(x)
            if name in wanted:
                maps[name] = x
        return x, maps

    def forward(self, x: Tensor) -> Tensor:
        """Normalised chips (B, 3, 150, 150) -> descriptors (B, 128)."""
        x, _ = self._trunk(x)
        return self.fc(x.mean(dim=(2, 3)))

    # -- public API on images ---------------------------------------------------------------------------
    def preprocess(
        self,
        images: Tensor,
        *,
        frame: str = "chip",
        landmarks: Tensor | None = None,
        value_range: tuple[float, float] = (0.0, 1.0),
    ) -> Tensor:
        """Bring RGB images (B, 3, H, W) to normalised 150x150 chips, differentiably.

        frame "chip": already dlib chips (resized bilinearly if not 150x150); "ffhq": FFHQ-aligned crops of
        any size, cut with the fixed FFHQ->chip transform; "landmarks": any photos, aligned like
        dlib.get_face_chip from dlib's 5 landmarks `landmarks` (B, 5, 2) in pixel (x, y).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images (B, 3, H, W), got {tuple(images.shape)}")
        if frame == "chip":
            chips = images
            if images.shape[-2:] != (CHIP_SIZE, CHIP_SIZE):
                chips = F.interpolate(images, (CHIP_SIZE, CHIP_SIZE), mode="bilinear", align_corners=False,
                                      antialias=True)
        elif frame == "ffhq":
            chips = crop_ffhq_to_chip(images)
        elif frame == "landmarks":
            if landmarks is None:
                raise ValueError('frame="landmarks" needs landmarks (B, 5, 2) from shape_predictor_5')
            chips = warp_to_chip(images, chip_to_image_from_landmarks(landmarks.to(images)))
        else:
            raise ValueError(f"unknown frame {frame!r}; use 'chip', 'ffhq' or 'landmarks'")
        return self.normalize(chips, value_range)

    def embed(self, images: Tensor, **preprocess_args) -> Tensor:
        """RGB images (B, 3, H, W) -> (B, 128) descriptors; arguments as `preprocess`."""
        return self(self.preprocess(images, **preprocess_args))

    def features(
        self, images: Tensor, layers: Sequence[str] = FEATURE_LAYERS[:-1], **preprocess_args
    ) -> dict[str, Tensor]:
        """Intermediate maps for a perceptual loss: {layer: (B, C, h, w)} (and "embedding": (B, 128))."""
        unknown = set(layers) - set(FEATURE_LAYERS)
        if unknown:
            raise ValueError(f"unknown layers {sorted(unknown)}; choose from {FEATURE_LAYERS}")
        x, maps = self._trunk(self.preprocess(images, **preprocess_args), layers)
        if "embedding" in layers:
            maps["embedding"] = self.fc(x.mean(dim=(2, 3)))
        return maps

    # -- conversion from dlib ---------------------------------------------------------------------------
    def dlib_plan(self) -> list[tuple[str, str | None]]:
        """(dlib layer kind, our parameter prefix or None) for every dlib computing layer, input first."""
        plan: list[tuple[str, str | None]] = [
            ("con", "stem_conv"), ("affine", "stem_affine"), ("relu", None), ("max_pool", None)]
        for name, *_ in LEVELS:
            for index, block in enumerate(getattr(self, name)):
                plan += block.dlib_plan(f"{name}.{index}")
        return plan + [("avg_pool", None), ("fc", "fc")]


def dlib_state_dict(net: DlibNet, model: DlibFaceResNet | None = None) -> dict[str, Tensor]:
    """Map parsed dlib layers onto DlibFaceResNet's parameters, checking kinds and shapes on the way."""
    if model is None:
        with torch.device("meta"):  # only the layout is read: no random init, nothing drawn from the global RNG
            model = DlibFaceResNet()
    plan = model.dlib_plan()
    if len(plan) != len(net.layers):
        raise ValueError(f"dlib file has {len(net.layers)} layers, the port expects {len(plan)}")
    target = model.state_dict()
    state: dict[str, Tensor] = {"mean_rgb": torch.tensor(net.input.mean_rgb, dtype=torch.float32)}
    names = {"con": ("weight", "bias"), "affine": ("scale", "shift"), "fc": ("weight",)}
    for index, ((kind, prefix), record) in enumerate(zip(plan, net.layers, strict=True)):
        if record.kind != kind:
            raise ValueError(f"dlib layer {index} is {record.kind!r}, the port expects {kind!r}")
        _check_layer_settings(index, record, model, prefix)
        for key in names.get(kind, ()):
            name = f"{prefix}.{key}"
            value = torch.from_numpy(record.arrays[key])
            if tuple(value.shape) != tuple(target[name].shape):
                expected = tuple(target[name].shape)
                raise ValueError(f"{name}: dlib shape {tuple(value.shape)} != port {expected}")
            state[name] = value.contiguous()
    if net.input.rows != CHIP_SIZE or net.input.cols != CHIP_SIZE:
        raise ValueError(f"dlib input is {net.input.rows}x{net.input.cols}, the port expects {CHIP_SIZE}")
    return state


def _check_layer_settings(index: int, record: LayerRecord, model: nn.Module, prefix: str | None) -> None:
    """Strides and paddings in the file must be the ones the port hard-codes."""
    s = record.settings
    if record.kind == "con":
        conv = model.get_submodule(prefix)
        theirs = (s["nr"], s["stride_y"], s["padding_y"])
        ours = (conv.kernel_size[0], conv.stride[0], conv.padding[0])
        if theirs != ours:
            raise ValueError(f"dlib layer {index} ({prefix}): kernel/stride/padding {theirs} != port {ours}")
    elif record.kind == "avg_pool" and s["nr"] not in (0, 2):
        raise ValueError(f"dlib layer {index}: unexpected avg_pool {s}")
    elif record.kind == "max_pool" and (s["nr"], s["stride_y"], s["padding_y"]) != (3, 2, 0):
        raise ValueError(f"dlib layer {index}: unexpected max_pool {s}")


# ---------------------------------------------------------------------------------------------------------
# Conversion cache.

@dataclass(frozen=True)
class ConvertedWeights:
    path: Path
    source: Path
    source_sha256: str
    sha256: str
    converted_now: bool


def convert_dlib_resnet(dat_path: Path | None = None, cache: Path | None = None) -> ConvertedWeights:
    """Convert the .dat file once and cache the state_dict; reuse the cache while both sha256 sums agree."""
    source = Path(dat_path) if dat_path else dlib_model_path(FACE_RECOGNITION_RESNET)
    folder = (Path(cache) if cache else cache_dir()) / "identity"
    weights = folder / f"{CACHE_NAME}.pt"
    manifest = folder / f"{CACHE_NAME}.json"
    source_sha = file_digest(source)
    if source_sha != KNOWN_DAT_SHA256:
        log.debug("dlib face model %s has sha256 %s (not the one this port was written against)",
                  source, source_sha)
    if weights.is_file() and manifest.is_file():
        try:
            recorded = json.loads(manifest.read_text())
        except (OSError, ValueError):
            recorded = {}
        if (recorded.get("format") == CACHE_FORMAT and recorded.get("source_sha256") == source_sha
                and recorded.get("sha256") == file_digest(weights)):
            return ConvertedWeights(weights, source, source_sha, recorded["sha256"], False)
        log.info("identity weight cache %s is stale or damaged; converting %s again", weights, source)
    state = dlib_state_dict(read_dlib_net(source))
    save_torch(state, weights)
    digest = file_digest(weights)
    write_json_atomic(manifest, {
        "format": CACHE_FORMAT, "source": str(source), "source_sha256": source_sha, "sha256": digest,
        "note": "converted from dlib's serialized network by dlfp.models.dlib_resnet; regenerated when stale",
    })
    return ConvertedWeights(weights, source, source_sha, digest, True)


def load_dlib_resnet(
    device: torch.device | str | None = None, dat_path: Path | None = None, cache: Path | None = None
) -> DlibFaceResNet:
    """The converted network in eval mode with frozen parameters (gradients still flow to the input)."""
    converted = convert_dlib_resnet(dat_path, cache)
    with torch.device("meta"):  # no random init: every tensor comes from the file
        model = DlibFaceResNet()
    model.load_state_dict(torch.load(converted.path, map_location="cpu", weights_only=True), strict=True,
                          assign=True)
    model.requires_grad_(False).eval()
    # Channels-last weights route every convolution to oneDNN; in NCHW, PyTorch sends most of this network's
    # batch-1 convolutions to its slow reference kernel (2.5x slower on a CPU, measured).
    model = model.to(memory_format=torch.channels_last)
    return model.to(device) if device is not None else model


@lru_cache(maxsize=4)
def _shared_model(device: str) -> DlibFaceResNet:
    return load_dlib_resnet(device)


def face_descriptor(chips: np.ndarray, device: str = "cpu", batch_size: int = 64) -> np.ndarray:
    """uint8 RGB chips (N, 150, 150, 3) as dlib.get_face_chip makes them -> float32 descriptors (N, 128).

    Same numbers as dlib's face_recognition_model_v1.compute_face_descriptor(chip) up to float rounding.
    """
    chips = np.asarray(chips)
    if chips.ndim == 3:
        chips = chips[None]
    if chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
        raise ValueError(f"expected chips (N, {CHIP_SIZE}, {CHIP_SIZE}, 3), got {chips.shape}")
    model = _shared_model(device)
    out = []
    with torch.inference_mode():
        for start in range(0, len(chips), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(chips[start : start + batch_size])).to(device)
            x = batch.permute(0, 3, 1, 2).float()
            out.append(model(model.normalize(x, (0.0, 255.0))).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, EMBEDDING_DIM), np.float32)

