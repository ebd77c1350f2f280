"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

With a few hundred training faces the StyleGAN2 discriminator memorises the reals within a few hundred steps and its
feedback to the generator stops meaning "face". DiffAugment shows D only randomly augmented images, real and fake
alike, through operations that are differentiable in the image, so the generator still gets gradients through
them (and the R1 penalty is taken through them with respect to the un-augmented reals, as in the paper's code).

Policy ops and ranges as published: `color` = brightness + U(-0.5, 0.5), saturation x U(0, 2), contrast x
U(0.5, 1.5) (images in [-1, 1]); `translation` = integer shift by up to 1/8 of the size per axis, zero-filled;
`cutout` = one square of half the size, centred anywhere in the image (clipped at the borders), set to 0.
Every random draw comes from the augmenter's own seeded torch.Generator (on the CPU, then moved to the image's
device), so a run is deterministic and its state goes into the training checkpoint for a bit-identical resume.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from dlfp.params import diffaugment_policy

TRANSLATION_RATIO = 1 / 8
CUTOUT_RATIO = 1 / 2


class DiffAugment:
    """The policy's ops applied in order to a batch (N, C, H, W), each sample with its own random parameters."""

    def __init__(self, policy: str, seed: int) -> None:
        self.policy = diffaugment_policy(policy)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self._ops: dict[str, Callable[[Tensor], Tensor]] = {
            "color": self.color, "translation": self.translation, "cutout": self.cutout}

    def __bool__(self) -> bool:
        return bool(self.policy)

    def __call__(self, images: Tensor) -> Tensor:
        for name in self.policy:
            images = self._ops[name](images)
        return images.contiguous()

    def state_dict(self) -> dict:
        return {"policy": ",".join(self.policy), "seed": self.seed, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def _uniform(self, images: Tensor, low: float, high: float) -> Tensor:
        """One U(low, high) per sample, shaped (N, 1, 1, 1) to broadcast over the image."""
        draw = torch.rand(images.shape[0], 1, 1, 1, generator=self.generator)
        return (low + (high - low) * draw).to(images.device, images.dtype)

    def _integers(self, count: int, low: int, high: int) -> list[int]:
        """count integers uniform in [low, high] (inclusive)."""
        return torch.randint(low, high + 1, (count,), generator=self.generator).tolist()

    def color(self, images: Tensor) -> Tensor:
        images = images + self._uniform(images, -0.5, 0.5)  # brightness
        gray = images.mean(dim=1, keepdim=True)
        images = (images - gray) * self._uniform(images, 0.0, 2.0) + gray  # saturation
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        return (images - mean) * self._uniform(images, 0.5, 1.5) + mean  # contrast

    def translation(self, images: Tensor) -> Tensor:
        """out[y, x] = in[y + dy, x + dx], zero where that falls outside; |dy|, |dx| <= round(size / 8)."""
        n, _, height, width = images.shape
        max_dy, max_dx = int(height * TRANSLATION_RATIO + 0.5), int(width * TRANSLATION_RATIO + 0.5)
        dys, dxs = self._integers(n, -max_dy, max_dy), self._integers(n, -max_dx, max_dx)
        padded = F.pad(images, [max_dx, max_dx, max_dy, max_dy])
        return torch.stack([padded[i, :, max_dy + dy:max_dy + dy + height, max_dx + dx:max_dx + dx + width]
                            for i, (dy, dx) in enumerate(zip(dys, dxs, strict=True))])

    def cutout(self, images: Tensor) -> Tensor:
        """Zero one square of side round(size / 2) per sample, centred uniformly in the image (clipped)."""
        n, _, height, width = images.shape
        cut_h, cut_w = int(height * CUTOUT_RATIO + 0.5), int(width * CUTOUT_RATIO + 0.5)
        # Centres in [0, size - cut % 2]: the published range, which lets an even square reach both borders.
        tops = torch.tensor(self._integers(n, 0, height - cut_h % 2)) - cut_h // 2
        lefts = torch.tensor(self._integers(n, 0, width - cut_w % 2)) - cut_w // 2
        rows, cols = torch.arange(height), torch.arange(width)
        in_rows = (rows[None] >= tops[:, None]) & (rows[None] < tops[:, None] + cut_h)
        in_cols = (cols[None] >= lefts[:, None]) & (cols[None] < lefts[:, None] + cut_w)
        keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
        return images * keep[:, None].to(images.device, images.dtype)
