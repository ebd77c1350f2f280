"""Facial-component losses: RoI-aligned eye and mouth crops, one discriminator each, GAN + Gram style.

Boxes are [cx, cy, half] in pixel-index coordinates (pixel i's centre at i) of the training images, as the
shard json stores them (scaled to the training size by the data loader).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from dlfp.losses.perceptual import gram_matrix

COMPONENTS = ("left_eye", "right_eye", "mouth")
REFERENCE_SIZE = 512
CROP_SIZE_512 = {"left_eye": 80, "right_eye": 80, "mouth": 120}  # crop side at 512 px
MIN_CROP = 8  # the component discriminator halves twice; below this its patch map vanishes
STYLE_FEATURE_WEIGHTS = (0.5, 1.0)  # Gram loss weights after conv3 and conv5 of the component D


def crop_sizes(image_size: int) -> dict[str, int]:
    """Crop side per component at `image_size`: 80 / 120 px at 512, scaled, at least MIN_CROP."""
    return {name: max(MIN_CROP, round(side * image_size / REFERENCE_SIZE)) for name, side in CROP_SIZE_512.items()}


def boxes_to_rois(boxes: Tensor) -> Tensor:
    """(B, 3) [cx, cy, half] -> (B, 5) [batch index, x1, y1, x2, y2] in roi_align's continuous coordinates.

    With aligned=True roi_align puts pixel i's centre at i + 0.5, so the box edges are shifted by half a pixel.
    """
    index = torch.arange(len(boxes), dtype=boxes.dtype, device=boxes.device)[:, None]
    cx, cy, half = boxes[:, 0:1] + 0.5, boxes[:, 1:2] + 0.5, boxes[:, 2:3]
    return torch.cat([index, cx - half, cy - half, cx + half, cy + half], dim=1)


def crop_components(images: Tensor, boxes: Mapping[str, Tensor], sizes: Mapping[str, int]) -> dict[str, Tensor]:
    """images (B, 3, H, W), boxes {name: (B, 3)} -> {name: (B, 3, s, s)} bilinear RoI crops (differentiable)."""
    crops = {}
    for name in COMPONENTS:
        rois = boxes_to_rois(boxes[name].to(images.dtype))
        crops[name] = roi_align(images, rois, output_size=sizes[name], spatial_scale=1.0, sampling_ratio=-1,
                                aligned=True)
    return crops


def component_style_loss(fake_feats: Sequence[Tensor], real_feats: Sequence[Tensor],
                         weights: Sequence[float] = STYLE_FEATURE_WEIGHTS) -> Tensor:
    """Sum of weight * L1(Gram(fake), Gram(real)) over the component D's feature maps."""
    total = fake_feats[0].new_zeros(())
    for weight, fake, real in zip(weights, fake_feats, real_feats, strict=True):
        total = total + weight * F.l1_loss(gram_matrix(fake.float()), gram_matrix(real.float().detach()))
    return total
