"""The exponential moving average of the generator (the released weights) and its decay counted in images.

Imports torch only.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(images_per_step: int, half_life_images: float, images_seen: int | None = None,
              rampup: float | None = None) -> float:
    """Per-step EMA decay with a half-life counted in training images: 0.5 ** (images_per_step / half_life).

    The published 0.5 ** (32 / 10000) is this with 32 images per step and a 10k-image half-life; counting in
    images keeps the averaging horizon when the batch (or the number of GPUs) changes. With `rampup` (StyleGAN2-ADA)
    the half-life is at most rampup * images_seen, so early on the average follows the network instead of
    remembering its random initialisation."""
    if rampup is not None and images_seen is not None:
        half_life_images = min(half_life_images, rampup * images_seen)
    if half_life_images <= 0:
        return 0.0
    return 0.5 ** (images_per_step / half_life_images)


class EMA:
    """Exponential moving average of a network's parameters (buffers are copied): the released generator."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        decay = self.decay if decay is None else decay
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)
