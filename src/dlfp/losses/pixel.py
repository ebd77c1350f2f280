"""Pixel losses: L1 on the output and on the U-Net's intermediate toRGB images (the restoration pyramid)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor


def l1_loss(output: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over every element."""
    return F.l1_loss(output, target)


def halving_pyramid(image: Tensor, sizes: Sequence[int]) -> dict[int, Tensor]:
    """{size: image at size px} for each of `sizes`, made as the reference makes its pyramid GT.

    Each level is the previous one downscaled by 0.5 with bilinear interpolation (align_corners False, no
    antialias), starting from the full image; not one direct resize to each size, which at 8 px would sample
    a 512 px image at sparse points. Every size must be the image's size divided by a power of 2.
    """
    height, width = image.shape[-2:]
    if height != width:
        raise ValueError(f"pyramid targets need a square image, got {height}x{width}")
    wanted = set(sizes)
    bad = sorted(s for s in wanted if s < 1 or s > width or width % s or (width // s) & (width // s - 1))
    if bad:
        raise ValueError(f"pyramid sizes {bad} are not {width} px halved a whole number of times")
    levels = {width: image}
    level = image
    while level.shape[-1] > min(wanted):
        level = F.interpolate(level, scale_factor=0.5, mode="bilinear", align_corners=False)
        levels[level.shape[-1]] = level
    return {size: levels[size] for size in sizes}


def pyramid_loss(intermediate: Sequence[Tensor], target: Tensor) -> Tensor:
    """Sum over levels of L1(toRGB image at s px, target halved step by step down to s px).

    The U-Net's own RGB heads are supervised so that its features stay an image restoration (the SFT maps
    carry that information into the decoder). The targets are the reference's GT pyramid: `halving_pyramid`."""
    targets = halving_pyramid(target, [rgb.shape[-1] for rgb in intermediate])
    total = target.new_zeros(())
    for rgb in intermediate:
        total = total + l1_loss(rgb, targets[rgb.shape[-1]])
    return total
