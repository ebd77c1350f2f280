"""Non-saturating logistic GAN loss and the lazy R1 penalty (StyleGAN2, used for every discriminator)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

R1_GAMMA = 10.0  # published R1 weight
R1_INTERVAL = 16  # R1 every 16 discriminator steps (lazy regularisation)


def generator_loss(fake_logits: Tensor) -> Tensor:
    """G minimises softplus(-D(fake)) = -log sigmoid(D(fake)): strong gradients while D rejects fakes."""
    return F.softplus(-fake_logits).mean()


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """D minimises softplus(-D(real)) + softplus(D(fake)) (logistic loss on real = 1, fake = 0)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def r1_penalty(real_logits: Tensor, real_images: Tensor) -> Tensor:
    """Mean over samples of ||d D(x) / d x||^2 on real images (needs real_images.requires_grad)."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def lazy_r1_loss(penalty: Tensor, gamma: float = R1_GAMMA, interval: int = R1_INTERVAL) -> Tensor:
    """gamma / 2 * interval * penalty: applied every `interval` steps, so scaled to the same mean strength."""
    return gamma / 2 * interval * penalty


def lazy_betas(betas: tuple[float, float], interval: int) -> tuple[float, float]:
    """Adam betas of a lazily regularised network, beta ** (interval / (interval + 1)) (StyleGAN2)."""
    ratio = interval / (interval + 1)
    return betas[0] ** ratio, betas[1] ** ratio


def lazy_lr(lr: float, interval: int) -> float:
    """Learning rate of a lazily regularised network, lr * interval / (interval + 1) (StyleGAN2)."""
    return lr * interval / (interval + 1)
