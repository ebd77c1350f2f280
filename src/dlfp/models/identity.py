"""Face identity networks that need no download.

`DlibFaceResNet` is a faithful PyTorch port of dlib's 128-D face-recognition ResNet
(dlib_face_recognition_resnet_model_v1.dat, 99.38% on LFW at distance 0.6), converted from the file shipped
by the face-recognition-models package. dlib runs it on the CPU, one image at a time, without gradients;
the port gives a differentiable identity loss, a face perceptual feature extractor and a batched identity
metric. The converted state_dict is cached (sha256-checked against the source .dat and itself); no
converted weights are committed.

`ArcFaceResNet18` is the optional ArcFace network of the GFP-GAN recipe (arcface_resnet18.pth), which the
user must provide (see `arcface_weights_path`).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlfp.io.atomic import write_bytes_atomic, write_json_atomic
from dlfp.io.hashing import file_digest
from dlfp.models.dlib_files import FACE_RECOGNITION_RESNET, LANDMARKS_5, dlib_model_path
from dlfp.models.dlib_resnet_dat import DlibNet, LayerRecord, read_dlib_net

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# Constants of dlib's network and its preprocessing.

EMBEDDING_DIM = 128
CHIP_SIZE = 150  # input_rgb_image_sized<150>
CHIP_PADDING = 0.25  # dlib.get_face_chip / compute_face_descriptor default padding
INPUT_SCALE = 256.0  # dlib's input layer: (pixel - mean) / 256, pixels in 0..255
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)  # also read back from the .dat file
MATCH_THRESHOLD = 0.6  # dlib: same person when the euclidean distance is below 0.6
# sha256 of the .dat in face-recognition-models 0.3.0 (informative: any file with this layout converts)
KNOWN_DAT_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
CACHE_FORMAT = 1
CACHE_ENV = "DLFP_CACHE"
CACHE_NAME = "dlib_face_resnet_v1"

# dlib's 5-point chip template (get_face_chip_details, image_transforms/interpolation.h), in units of the
# face box before padding: outer and inner corner of the eye on the image right, then of the eye on the
# image left, then the base of the nose (the order of shape_predictor_5_face_landmarks).
FIVE_POINT_TEMPLATE = (
    (0.8595674595992, 0.2134981538014),
    (0.6460604764104, 0.2289674387677),
    (0.1205750620789, 0.2137274526848),
    (0.3340850613712, 0.2290642403242),
    (0.4901123135679, 0.6277975316475),
)

# Where dlib's 150x150 chip (padding 0.25) lies inside an FFHQ-aligned face crop, in continuous image units
# (x and y in [0, 1] across the crop; pixel i covers [i, i + 1) / size). Obtained with
# `derive_ffhq_chip_frame(../shared/faces/aligned_hq)`: on every FFHQ file there (ffhq*: 1,115 crops at 256
# and 1024 px) HOG detection + shape_predictor_5, dlib.get_face_chip_details(shape, 150, 0.25), the chip
# rectangle's centre and side divided by the crop size, then the mean over the 1,106 crops with exactly one
# face. Spread over faces (std): centre x 0.0101, y 0.0096, side 0.0407, angle 0.055 rad. FFHQ's alignment
# fixes eyes and mouth, so one transform serves every crop size; it is the mean face, not each face's own.
FFHQ_CHIP_CENTER = (0.504927, 0.606872)
FFHQ_CHIP_SIDE = 0.689709
FFHQ_CHIP_ANGLE = 0.003442  # radians, counter-clockwise as dlib's chip_details.angle

# Layers `features` can return, from the input upwards.
FEATURE_LAYERS = ("stem", "level4", "level3", "level2", "level1", "level0", "embedding")


class IdentityWeightsMissingError(FileNotFoundError):
    """An identity network's weight file is not where it must be."""


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


def cache_dir() -> Path:
    """$DLFP_CACHE, else ~/.cache/dlfp: converted weights, never committed."""
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "dlfp"


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
    buffer = io.BytesIO()  # saved via memory: torch.save names the archive after the file, which is random
    torch.save(state, buffer)
    write_bytes_atomic(weights, buffer.getvalue())
    digest = file_digest(weights)
    write_json_atomic(manifest, {
        "format": CACHE_FORMAT, "source": str(source), "source_sha256": source_sha, "sha256": digest,
        "note": "converted from dlib's serialized network by dlfp.models.identity; regenerated when stale",
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


# ---------------------------------------------------------------------------------------------------------
# Alignment (dlib's get_face_chip, differentiable).


def chip_to_image_from_landmarks(
    landmarks: Tensor, size: int = CHIP_SIZE, padding: float = CHIP_PADDING
) -> Tensor:
    """(B, 5, 2) dlib 5-point landmarks -> (B, 2, 3) affine maps from chip pixels to image pixels.

    As dlib: least-squares similarity from the padded template to the landmarks, then the chip_details
    rectangle (side size*scale, dlib's centered_drect shrinks it by one pixel) sampled at `size` points.
    """
    template = (torch.tensor(FIVE_POINT_TEMPLATE, dtype=landmarks.dtype, device=landmarks.device)
                + padding) / (2 * padding + 1) * size  # (5, 2)
    src = template - template.mean(0)
    dst = landmarks - landmarks.mean(1, keepdim=True)  # (B, 5, 2)
    norm = (src**2).sum()
    a = (src[:, 0] * dst[..., 0] + src[:, 1] * dst[..., 1]).sum(-1) / norm  # scale*cos
    b = (src[:, 0] * dst[..., 1] - src[:, 1] * dst[..., 0]).sum(-1) / norm  # scale*sin
    scale = torch.sqrt(a * a + b * b)
    angle = torch.atan2(b, a)
    # centre of the chip mapped into the image by the similarity
    half = torch.tensor([size / 2.0, size / 2.0], dtype=landmarks.dtype, device=landmarks.device)
    rot = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)  # (B, 2, 2)
    center = landmarks.mean(1) + (rot @ (half - template.mean(0)))
    return _chip_affine(center, size * scale, angle, size)


def _chip_affine(center: Tensor, side: Tensor, angle: Tensor, size: int) -> Tensor:
    """dlib's extract_image_chip mapping: chip pixel (0..size-1) to the rotated rect of side `side`."""
    spacing = (side - 1.0) / (size - 1)  # centered_drect(..., side) spans side - 1 pixels
    cos, sin = torch.cos(angle) * spacing, torch.sin(angle) * spacing
    offset = (size - 1) / 2.0
    tx = center[..., 0] - offset * (cos - sin)
    ty = center[..., 1] - offset * (sin + cos)
    return torch.stack([torch.stack([cos, -sin, tx], -1), torch.stack([sin, cos, ty], -1)], -2)


def warp_to_chip(images: Tensor, chip_to_image: Tensor, size: int = CHIP_SIZE) -> Tensor:
    """Bilinear chip extraction (B, 3, H, W) -> (B, 3, size, size); zero outside the image, like dlib.

    When the chip is much smaller than the face box, dlib samples from a 2x image pyramid level; here an
    antialiased 2^k downscale plays that part.
    """
    height, width = images.shape[-2:]
    spacing = torch.linalg.vector_norm(chip_to_image[:, :, 0], dim=-1)  # image pixels per chip pixel
    levels = int(math.floor(math.log2(max(float(spacing.max()), 1.0)))) if spacing.numel() else 0
    matrix = chip_to_image
    if levels > 0:
        factor = 2**levels
        images = F.interpolate(images, (max(1, round(height / factor)), max(1, round(width / factor))),
                               mode="bilinear", align_corners=False, antialias=True)
        shrink_y, shrink_x = images.shape[-2] / height, images.shape[-1] / width
        scale = torch.tensor([[shrink_x], [shrink_y]], dtype=matrix.dtype, device=matrix.device)
        matrix = matrix * scale
        matrix[:, :, 2] += torch.tensor([0.5 * shrink_x - 0.5, 0.5 * shrink_y - 0.5], dtype=matrix.dtype,
                                        device=matrix.device)
        height, width = images.shape[-2:]
    # chip pixel -> normalised image coords (align_corners=True: -1 and 1 are the outer pixel centres)
    to_norm = torch.tensor([[2.0 / (width - 1), 0, -1.0], [0, 2.0 / (height - 1), -1.0]],
                           dtype=matrix.dtype, device=matrix.device)
    half = (size - 1) / 2.0  # normalised output coords -> chip pixels
    from_norm = torch.tensor([[half, 0, half], [0, half, half], [0, 0, 1.0]], dtype=matrix.dtype,
                             device=matrix.device)
    bottom = torch.tensor([0, 0, 1.0], dtype=matrix.dtype, device=matrix.device).expand(len(matrix), 1, 3)
    full = torch.cat([matrix, bottom], 1)  # (B, 3, 3)
    theta = to_norm @ full @ from_norm
    grid = F.affine_grid(theta.to(images.dtype), [len(images), 3, size, size], align_corners=True)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def ffhq_chip_to_image(frame_size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(1, 2, 3) chip-pixel -> crop-pixel map of the fixed FFHQ transform for a crop of `frame_size` px."""
    center = torch.tensor([FFHQ_CHIP_CENTER[0] * frame_size - 0.5, FFHQ_CHIP_CENTER[1] * frame_size - 0.5],
                          dtype=torch.float64)
    side = torch.tensor(FFHQ_CHIP_SIDE * frame_size, dtype=torch.float64)
    angle = torch.tensor(FFHQ_CHIP_ANGLE, dtype=torch.float64)
    return _chip_affine(center, side, angle, CHIP_SIZE)[None].to(dtype)


def crop_ffhq_to_chip(images: Tensor) -> Tensor:
    """FFHQ-aligned crops (B, 3, S, S), any S (256, 512, 1024) -> dlib chips (B, 3, 150, 150)."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"FFHQ crops are square, got {tuple(images.shape[-2:])}")
    matrix = ffhq_chip_to_image(images.shape[-1], torch.float64).to(images.device).expand(len(images), 2, 3)
    return warp_to_chip(images, matrix)


# ---------------------------------------------------------------------------------------------------------
# Numpy conveniences and metrics.


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


def identity_distance(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """Euclidean distance between descriptors along the last axis (dlib's measure)."""
    if isinstance(a, Tensor):
        return torch.linalg.vector_norm(a - b, dim=-1)
    return np.linalg.norm(np.asarray(a) - np.asarray(b), axis=-1)


def cosine_angle_degrees(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """Angle between descriptors in degrees (the "Deg." identity column of GFP-GAN's tables)."""
    if isinstance(a, Tensor):
        cos = F.cosine_similarity(a, b, dim=-1).clamp(-1.0, 1.0)
        return torch.rad2deg(torch.arccos(cos))
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def match_rate(a: Tensor | np.ndarray, b: Tensor | np.ndarray, threshold: float = MATCH_THRESHOLD) -> float:
    """Fraction of pairs (a[i], b[i]) that dlib calls the same person (distance < threshold)."""
    distance = identity_distance(a, b)
    if isinstance(distance, Tensor):
        return float((distance < threshold).float().mean())
    return float(np.mean(distance < threshold))


# ---------------------------------------------------------------------------------------------------------
# dlib detection helpers (tests, benchmarks, the FFHQ constants).


@lru_cache(maxsize=1)
def _dlib_tools():
    import dlib

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(dlib_model_path(LANDMARKS_5)))


def dlib_face_chips(image: np.ndarray, upsample: int = 1) -> list[tuple[np.ndarray, np.ndarray, object]]:
    """HOG-detect faces in an RGB uint8 image; per face (chip uint8 150x150x3, 5 landmarks (5, 2), shape)."""
    import dlib

    detector, predictor = _dlib_tools()
    out = []
    for box in detector(image, upsample):
        shape = predictor(image, box)
        points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        out.append((dlib.get_face_chip(image, shape), points, shape))
    return out


def derive_ffhq_chip_frame(
    folder: Path | str, limit: int | None = None, pattern: str = "ffhq*"
) -> dict[str, float]:
    """Measure where dlib's chip lies in FFHQ-aligned crops (how FFHQ_CHIP_* were obtained)."""
    import dlib
    from PIL import Image

    centers, sides, angles = [], [], []
    files = sorted(p for p in Path(folder).glob(pattern) if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    for path in files[:limit]:
        image = np.asarray(Image.open(path, formats=("PNG", "JPEG")).convert("RGB"))
        faces = dlib_face_chips(image, upsample=1 if image.shape[0] < 512 else 0)
        if len(faces) != 1:
            continue
        details = dlib.get_face_chip_details(faces[0][2], CHIP_SIZE, CHIP_PADDING)
        rect, size = details.rect, image.shape[0]
        # drectangle corners are pixel centres of a rect spanning side - 1 pixels (dlib's centered_drect)
        centers.append(((rect.left() + rect.right()) / 2 + 0.5, (rect.top() + rect.bottom()) / 2 + 0.5))
        sides.append((rect.right() - rect.left() + 1) / size)
        angles.append(details.angle)
        centers[-1] = (centers[-1][0] / size, centers[-1][1] / size)
    c, s, a = np.array(centers), np.array(sides), np.array(angles)
    return {"count": len(s), "center_x": float(c[:, 0].mean()), "center_y": float(c[:, 1].mean()),
            "side": float(s.mean()), "angle": float(a.mean()), "std_center_x": float(c[:, 0].std()),
            "std_center_y": float(c[:, 1].std()), "std_side": float(s.std()), "std_angle": float(a.std())}


# ---------------------------------------------------------------------------------------------------------
# Optional ArcFace ResNet18 (GFP-GAN's identity network; weights provided by the user).

ARCFACE_FILE = "arcface_resnet18.pth"
ARCFACE_INPUT = 128  # grey 128x128, GFP-GAN gfpgan-spec section 4
ARCFACE_EMBEDDING = 512
GREY_WEIGHTS = (0.2989, 0.587, 0.114)


class IRBlock(nn.Module):
    """Improved residual block: BN, 3x3 conv, BN, PReLU, 3x3 conv (stride), BN, + skip, PReLU (shared)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.prelu = nn.PReLU()
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.prelu(self.bn1(self.conv1(self.bn0(x))))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return self.prelu(out + skip)


class ArcFaceResNet18(nn.Module):
    """ArcFace ResNet18 (IR blocks [2, 2, 2, 2], no SE) on grey 128x128 faces -> (B, 512).

    conv 3x3 (1->64) BN PReLU, 2x2 max pool -> (B, 64, 64, 64); layer1..4 -> (B, 512, 8, 8); BN, flatten
    (32768), fc5 -> 512, BN1d.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.prelu = nn.PReLU()
        channels = 64
        for index, (out_channels, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
            self.add_module(f"layer{index}", nn.Sequential(
                IRBlock(channels, out_channels, stride), IRBlock(out_channels, out_channels, 1)))
            channels = out_channels
        self.bn4 = nn.BatchNorm2d(512)
        self.dropout = nn.Dropout()
        self.fc5 = nn.Linear(512 * 8 * 8, ARCFACE_EMBEDDING)
        self.bn5 = nn.BatchNorm1d(ARCFACE_EMBEDDING)

    def forward(self, x: Tensor) -> Tensor:
        """Grey (B, 1, 128, 128) -> (B, 512)."""
        x = F.max_pool2d(self.prelu(self.bn1(self.conv1(x))), 2)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn4(x)).flatten(1)
        return self.bn5(self.fc5(x))

    @staticmethod
    def preprocess(images: Tensor) -> Tensor:
        """RGB (B, 3, H, W) in the generator's range ([-1, 1] in GFP-GAN) -> grey (B, 1, 128, 128)."""
        w = torch.tensor(GREY_WEIGHTS, dtype=images.dtype, device=images.device)
        grey = (images * w[:, None, None]).sum(1, keepdim=True)
        return F.interpolate(grey, (ARCFACE_INPUT, ARCFACE_INPUT), mode="bilinear", align_corners=False)

    def embed(self, images: Tensor) -> Tensor:
        return self(self.preprocess(images))


def arcface_weights_path() -> Path:
    """Where load_arcface looks by default: $DLFP_CACHE/weights/arcface_resnet18.pth."""
    return cache_dir() / "weights" / ARCFACE_FILE


def load_arcface(path: Path | str | None = None, device: torch.device | str | None = None) -> ArcFaceResNet18:
    """Load user-provided ArcFace weights strictly (weights_only); a clear error when the file is missing."""
    path = Path(path) if path else arcface_weights_path()
    if not path.is_file():
        raise IdentityWeightsMissingError(
            f"{path}: ArcFace weights not found. dl-fp cannot download them. Put GFP-GAN's "
            f"{ARCFACE_FILE} (ArcFace ResNet18, IR blocks, grey 128x128 input) at {arcface_weights_path()} "
            f"(or set ${CACHE_ENV}), or pass its path; without it use the dlib identity network "
            "(dlfp.models.identity.load_dlib_resnet), which ships with face-recognition-models."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("params_ema", "params", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    state = {k.removeprefix("module."): v for k, v in state.items()}
    with torch.device("meta"):  # no random init of the 16.8 M-parameter fc5: every tensor comes from the file
        model = ArcFaceResNet18()
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False).eval()
    # Channels-last weights route every convolution to oneDNN; in NCHW, PyTorch sends most of this network's
    # batch-1 convolutions to its slow reference kernel (2.5x slower on a CPU, measured).
    model = model.to(memory_format=torch.channels_last)
    return model.to(device) if device is not None else model
