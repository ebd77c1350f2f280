"""GFPGANv1Clean: degradation-removal U-Net + channel-split SFT into a StyleGAN2 prior (clean layout).

The U-Net encodes the degraded face to a W+ latent (B, num_latent, 512) and, on its way up, produces
per-level spatial scale/shift maps. The frozen StyleGAN2 decoder renders the face from the latent while the
SFT maps pull its features toward the input. At the release configuration the state_dict equals the
GFPGAN v1.2/v1.3/v1.4 weights key for key (shared/reference/state_dicts/gfpganv1clean_512.json).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlfp.models.stylegan2 import (
    LRELU_SLOPE,
    StyleGAN2GeneratorClean,
    channel_table,
    log2_size,
    set_channels_last,
    upsample2x,
)
from dlfp.models.stylegan2 import equalized_lr_multipliers as stylegan_lr_multipliers

UNET_WIDTH = 0.5  # the U-Net uses the decoder's channel table times 0.5


class UNetResBlock(nn.Module):
    """conv3x3 + lrelu -> bilinear resample -> conv3x3 + lrelu, plus resampled input through a 1x1 skip.

    mode "down" halves the resolution, "up" doubles it. The sum is not divided by sqrt 2 (release layout).
    Two exact rewrites save time: bilinear x0.5 (align_corners False) is a 2x2 average, and on the way up
    the 1x1 skip conv runs before the up-sampling (both are linear and act on different axes).
    """

    def __init__(self, in_channels: int, out_channels: int, mode: str = "down") -> None:
        super().__init__()
        if mode not in ("down", "up"):
            raise ValueError(f"mode must be 'down' or 'up', got {mode!r}")
        self.mode = mode
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def _resample(self, x: Tensor) -> Tensor:
        if self.mode == "down":
            return F.avg_pool2d(x, 2)  # == bilinear x0.5, align_corners False
        return upsample2x(x)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C_out, H*f, W*f), f = 0.5 or 2
        out = F.leaky_relu_(self.conv1(x), LRELU_SLOPE)
        out = F.leaky_relu_(self.conv2(self._resample(out)), LRELU_SLOPE)
        skip = self.skip(self._resample(x)) if self.mode == "down" else upsample2x(self.skip(x))
        # skip is a fresh tensor no backward formula reads; out is (lrelu's saved output), so add into skip.
        return skip.add_(out)


def _sft_branch(channels: int, out_channels: int) -> nn.Sequential:
    """conv3x3 -> lrelu -> conv3x3 (keys .0 and .2), one each for the SFT scale and shift."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, 1, 1),
        nn.LeakyReLU(LRELU_SLOPE, inplace=True),
        nn.Conv2d(channels, out_channels, 3, 1, 1),
    )


class GFPGANv1Clean(nn.Module):
    """The GFP-GAN restoration network (clean layout, no custom ops).

    forward(x (B, 3, S, S) in [-1, 1]) -> (restored (B, 3, S, S), [toRGB images at 8, 16, ..., S px]).
    """

    def __init__(
        self,
        out_size: int = 512,
        num_style_feat: int = 512,
        channel_multiplier: float = 2,
        decoder_load_path: str | Path | None = None,
        fix_decoder: bool = True,
        num_mlp: int = 8,
        input_is_latent: bool = True,
        different_w: bool = True,
        narrow: float = 1.0,
        sft_half: bool = True,
    ) -> None:
        super().__init__()
        self.out_size = out_size
        self.num_style_feat = num_style_feat
        self.input_is_latent = input_is_latent
        self.different_w = different_w
        self.sft_half = sft_half
        # Channels-last activations and weights: oneDNN (CPU) and cuDNN (tensor cores) are faster on them.
        # set_channels_last(model, False) switches back to plain NCHW.
        self.channels_last = True
        self.log_size = log2_size(out_size)
        num_levels = self.log_size - 2  # 4 px -> out_size px in x2 steps
        unet = channel_table(channel_multiplier, narrow * UNET_WIDTH)

        # Encoder: 1x1 stem, residual down blocks S -> 4 px.
        self.conv_body_first = nn.Conv2d(3, unet[out_size], 1)
        in_channels = unet[out_size]
        self.conv_body_down = nn.ModuleList()
        for level in range(self.log_size, 2, -1):
            self.conv_body_down.append(UNetResBlock(in_channels, unet[2 ** (level - 1)], mode="down"))
            in_channels = unet[2 ** (level - 1)]
        self.final_conv = nn.Conv2d(in_channels, unet[4], 3, 1, 1)

        # Decoder of the U-Net: residual up blocks 4 -> S px, an RGB head per level (pyramid loss).
        in_channels = unet[4]
        self.conv_body_up = nn.ModuleList()
        self.toRGB = nn.ModuleList()  # noqa: N815 (official key name)
        for level in range(3, self.log_size + 1):
            self.conv_body_up.append(UNetResBlock(in_channels, unet[2**level], mode="up"))
            self.toRGB.append(nn.Conv2d(unet[2**level], 3, 1))
            in_channels = unet[2**level]

        num_latent = self.log_size * 2 - 2
        latent_features = num_latent * num_style_feat if different_w else num_style_feat
        self.final_linear = nn.Linear(unet[4] * 4 * 4, latent_features)

        self.stylegan_decoder = StyleGAN2GeneratorClean(
            out_size, num_style_feat=num_style_feat, num_mlp=num_mlp,
            channel_multiplier=channel_multiplier, narrow=narrow,
        )
        if decoder_load_path is not None:
            from dlfp.models.checkpoints import load_into

            load_into(self.stylegan_decoder, decoder_load_path)
        if fix_decoder:
            self.stylegan_decoder.requires_grad_(False)

        # SFT condition heads: with sft_half they modulate half of the decoder channels (= U-Net channels).
        self.condition_scale = nn.ModuleList()
        self.condition_shift = nn.ModuleList()
        for level in range(3, self.log_size + 1):
            channels = unet[2**level]
            sft_channels = channels if sft_half else channels * 2
            self.condition_scale.append(_sft_branch(channels, sft_channels))
            self.condition_shift.append(_sft_branch(channels, sft_channels))
        assert len(self.conv_body_up) == num_levels
        set_channels_last(self, True)

    @property
    def fixed_noise(self) -> bool:
        """Deterministic mode: the decoder uses its stored noise maps instead of fresh noise."""
        return self.stylegan_decoder.fixed_noise

    @fixed_noise.setter
    def fixed_noise(self, value: bool) -> None:
        self.stylegan_decoder.fixed_noise = bool(value)

    def encode(self, x: Tensor, return_rgb: bool = True) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """x (B, 3, S, S) -> (latent (B, num_latent, D) or (B, D), SFT conditions, toRGB pyramid)."""
        skips: list[Tensor] = []
        feat = F.leaky_relu_(self.conv_body_first(x), LRELU_SLOPE)  # (B, 32cm, S, S)
        for block in self.conv_body_down:
            feat = block(feat)
            skips.append(feat)  # S/2, ..., 4 px
        feat = F.leaky_relu_(self.final_conv(feat), LRELU_SLOPE)  # (B, 256n, 4, 4)
        latent = self.final_linear(feat.flatten(1))
        if self.different_w:
            latent = latent.view(latent.shape[0], -1, self.num_style_feat)  # (B, num_latent, D)

        conditions: list[Tensor] = []
        rgbs: list[Tensor] = []
        for level, block in enumerate(self.conv_body_up):
            feat = block(feat + skips[-1 - level])  # (B, C, 8 * 2^level, ...)
            conditions.append(self.condition_scale[level](feat))
            conditions.append(self.condition_shift[level](feat))
            if return_rgb:
                rgbs.append(self.toRGB[level](feat))
        return latent, conditions, rgbs

    def forward(
        self, x: Tensor, return_rgb: bool = True, randomize_noise: bool | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """x (B, 3, S, S) -> (image (B, 3, S, S), toRGB images [(B, 3, 8, 8), ..., (B, 3, S, S)]).

        randomize_noise None follows `self.fixed_noise` (False: fresh noise, as the release).
        The latent and the SFT maps are available through `encode`.
        """
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        latent, conditions, rgbs = self.encode(x, return_rgb=return_rgb)
        decoder = self.stylegan_decoder
        if not self.input_is_latent:  # map each code through the decoder's MLP
            latent = decoder.style_mlp(latent.flatten(0, -2)).view_as(latent)
        w_plus = latent if latent.dim() == 3 else latent.unsqueeze(1).expand(-1, decoder.num_latent, -1)
        noise = decoder.noise_inputs(None, randomize_noise)
        image, _ = decoder.synthesis(w_plus, noise, conditions=conditions, sft_half=self.sft_half)
        if self.channels_last:  # hand back plain NCHW tensors
            image = image.contiguous()
            rgbs = [rgb.contiguous() for rgb in rgbs]
        return image, rgbs

    @classmethod
    def from_checkpoint(cls, path: str | Path, **config: object) -> GFPGANv1Clean:
        """Build (release configuration unless overridden) and load official weights strictly."""
        from dlfp.models.checkpoints import load_into

        model = cls(**config)  # type: ignore[arg-type]
        load_into(model, path)
        return model


def equalized_lr_multipliers(model: GFPGANv1Clean) -> dict[str, float]:
    """Per-parameter lr multipliers that train the clean layout as the published GFPGANv1 trains its own layers.

    GFPGANv1 (the trainable layout) builds its U-Net, SFT heads and final linear from equalised-lr layers
    (EqualConv2d / EqualLinear: weights N(0, 1), scaled by 1 / sqrt(fan_in) at run time) and its decoder from
    StyleGAN2's; the clean layout stores the scaled weights. So every conv and linear weight gets 1 / sqrt(fan_in)
    and the decoder gets stylegan2.equalized_lr_multipliers (mapping x0.01); biases and the rest get 1.
    """
    multipliers = {f"stylegan_decoder.{name}": value
                   for name, value in stylegan_lr_multipliers(model.stylegan_decoder).items()}
    for name, module in model.named_modules():
        if name.startswith("stylegan_decoder"):
            continue
        if isinstance(module, nn.Conv2d):
            multipliers[f"{name}.weight"] = 1 / math.sqrt(module.in_channels * module.kernel_size[0] *
                                                          module.kernel_size[1])
        elif isinstance(module, nn.Linear):
            multipliers[f"{name}.weight"] = 1 / math.sqrt(module.in_features)
    return {name: multipliers.get(name, 1.0) for name, _ in model.named_parameters()}


def release_model(**overrides: object) -> GFPGANv1Clean:
    """The v1.2/v1.3/v1.4 release configuration (86,444,252 parameters at 512)."""
    config: dict[str, object] = dict(
        out_size=512, num_style_feat=512, channel_multiplier=2, num_mlp=8,
        input_is_latent=True, different_w=True, narrow=1, sft_half=True,
    )
    config.update(overrides)
    return GFPGANv1Clean(**config)  # type: ignore[arg-type]
