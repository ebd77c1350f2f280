"""The dlib chip frame: where dlib's 150x150 face chip lies in an image, and cutting it out differentiably.

dlib's face descriptor reads "chips" cut by dlib.get_face_chip from its 5 landmarks. Here the same cut is done
on tensors (gradients flow), either from 5 landmarks or with one fixed transform for FFHQ-aligned crops, plus
the dlib detection helpers that measured that transform. May import torch, numpy and dlfp.models.dlib_files
(dlib itself only inside the detection helpers).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dlfp.models.dlib_files import LANDMARKS_5, dlib_model_path

CHIP_SIZE = 150  # input_rgb_image_sized<150>
CHIP_PADDING = 0.25  # dlib.get_face_chip / compute_face_descriptor default padding

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
