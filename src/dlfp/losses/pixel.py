"""Pixel losses: L1 on the output and on the U-Net's intermediate toRGB images (the restoration pyramid)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor


def l1_loss(output: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over every element."""
    return F.l1_loss(output, target)


def downsample_to(image: Tensor, size: int) -> Tensor:
    """Bilinear resize (align_corners False) as the reference does for the pyramid targets."""
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)


def pyramid_loss(intermediate: Sequence[Tensor], target: Tensor) -> Tensor:
    """Sum over levels of L1(toRGB image at s px, target resized to s px).

    The U-Net's own RGB heads are supervised so that its features stay an image restoration (the SFT maps
    carry that information into the decoder)."""
    total = target.new_zeros(())
    for rgb in intermediate:
        total = total + l1_loss(rgb, downsample_to(target, rgb.shape[-1]))
    return total
