"""StyleGAN2 in the "clean" layout of the GFP-GAN v1.2+ release, and the StyleGAN2 discriminator.

Generator (StyleGAN2GeneratorClean): plain nn.Linear / static conv weights, bilinear up-sampling, weights
stored already multiplied by 1/sqrt(fan_in). The modulated convolution is computed as
"scale the input by the style -> convolve with the static weight -> scale the output by the demodulation
factor", which is mathematically equal to the per-sample modulated weight of the paper but keeps the conv
weight static (one dense conv for the whole batch instead of a grouped conv over freshly built weights).

Discriminator (StyleGAN2Discriminator): the original StyleGAN2 layout (equalised learning rate, biases in
the fused-lrelu activation, [1, 3, 3, 1] blur before strided convs, residual sums / sqrt 2), written in plain
PyTorch so it runs anywhere without custom CUDA ops. Its state_dict keys equal the published ones.

One module of about 640 lines on purpose: the generator, the discriminator and GFP-GAN's decoder (dlfp.models.gfpgan)
are built from the same StyleGAN2 layers (Blur, EqualConv2d, EqualLinear, FusedLeakyReLU, ConvLayer, the modulated
convolution), whose attribute names make up the published state_dict keys; one file keeps the whole architecture
readable against the paper and the released weights. (The discriminator could move to its own module if it grows.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LRELU_SLOPE = 0.2
SQRT2 = math.sqrt(2.0)
DEMOD_EPS = 1e-8  # added to sum(w^2) before rsqrt in weight demodulation
PIXEL_NORM_EPS = 1e-8
BLUR_KERNEL = (1, 3, 3, 1)  # binomial low-pass applied before every strided conv of the discriminator
CONST_SIZE = 4  # resolution of the learned constant input
MIN_LOG_SIZE = 6  # 64 px
MAX_LOG_SIZE = 10  # 1024 px
MODULATION_BIAS_INIT = 1.0  # styles start at 1 so the modulated conv starts as a plain conv
STDDEV_GROUP = 4  # minibatch-stddev group size
STDDEV_FEAT = 1  # minibatch-stddev feature channels
MAPPING_LR_MUL = 0.01  # StyleGAN2's lr multiplier of the mapping network (lr_mlp)


def log2_size(out_size: int) -> int:
    """log2 of a power-of-two resolution in 64..1024; anything else is a configuration error."""
    log_size = int(math.log2(out_size)) if out_size > 0 else -1
    if 2**log_size != out_size or not MIN_LOG_SIZE <= log_size <= MAX_LOG_SIZE:
        raise ValueError(f"out_size must be a power of two between 64 and 1024, got {out_size}")
    return log_size


def channel_table(channel_multiplier: float = 2, narrow: float = 1.0) -> dict[int, int]:
    """Channels per resolution of the StyleGAN2 generator / discriminator (the U-Net uses narrow * 0.5)."""
    wide = 512
    return {
        4: int(wide * narrow),
        8: int(wide * narrow),
        16: int(wide * narrow),
        32: int(wide * narrow),
        64: int(256 * channel_multiplier * narrow),
        128: int(128 * channel_multiplier * narrow),
        256: int(64 * channel_multiplier * narrow),
        512: int(32 * channel_multiplier * narrow),
        1024: int(16 * channel_multiplier * narrow),
    }


def upsample2x(x: Tensor) -> Tensor:
    """Bilinear x2 (align_corners=False), the up-sampling of the clean layout."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------------------------------------
# Generator (clean layout)
# ------------------------------------------------------------------------------------------------------------


class NormStyleCode(nn.Module):
    """Pixel norm of the input z, so the mapping MLP sees codes on the unit sphere (times sqrt(dim))."""

    def forward(self, x: Tensor) -> Tensor:  # (B, D) -> (B, D)
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + PIXEL_NORM_EPS)


class ModulatedConv2d(nn.Module):
    """Style-modulated conv: per-sample input-channel scales, optional demodulation, optional bilinear x2.

    weight: [1, C_out, C_in, k, k], stored already multiplied by 1/sqrt(C_in k k).
    modulation: Linear(num_style_feat -> C_in), bias initialised to 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        num_style_feat: int,
        demodulate: bool = True,
        upsample: bool = False,
        eps: float = DEMOD_EPS,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.upsample = upsample
        self.eps = eps
        self.padding = kernel_size // 2
        self.impl = "static"  # "grouped": the paper's per-sample weights (reference / benchmark baseline)
        self.modulation = nn.Linear(num_style_feat, in_channels, bias=True)
        nn.init.kaiming_normal_(self.modulation.weight, a=0, mode="fan_in", nonlinearity="linear")
        nn.init.constant_(self.modulation.bias, MODULATION_BIAS_INIT)
        fan_in = in_channels * kernel_size**2
        weight = torch.randn(1, out_channels, in_channels, kernel_size, kernel_size) / math.sqrt(fan_in)
        self.weight = nn.Parameter(modulated_weight_layout(weight, channels_last=True))

    def styles(self, style: Tensor) -> Tensor:
        """(B, num_style_feat) -> per-sample input-channel scales (B, C_in)."""
        return self.modulation(style)

    def demodulation(self, scales: Tensor) -> Tensor:
        """(B, C_in) -> (B, C_out): rsqrt(sum_{i,kh,kw} (w s_i)^2 + eps), no per-sample weights built."""
        weight_energy = self.weight[0].pow(2).sum(dim=(2, 3))  # (C_out, C_in)
        return torch.rsqrt(scales.pow(2) @ weight_energy.t() + self.eps)

    def forward(
        self, x: Tensor, style: Tensor, out_gain: float = 1.0, out_bias: Tensor | None = None
    ) -> Tensor:
        """x (B, C_in, H, W), style (B, num_style_feat) -> (B, C_out, H', W'), H' = 2H when upsampling.

        `out_gain` (StyleConv's sqrt 2) and `out_bias` (1, C_out, 1, 1) are fused into the per-channel output
        scaling (one pass over the output instead of three).
        """
        if self.impl == "grouped":
            out = modulated_conv_reference(self, x, style)
            out = out * out_gain if out_gain != 1.0 else out
            return out if out_bias is None else out + out_bias
        with torch.autocast(x.device.type, enabled=False):  # style maths in fp32 even under autocast
            scales = self.styles(style.float())  # (B, C_in)
            factor = self.demodulation(scales) * out_gain if self.demodulate else None  # (B, C_out)
        # Scaling per input channel commutes with bilinear up-sampling; scale the smaller tensor.
        x = x * scales.to(x.dtype)[:, :, None, None]
        if self.upsample:
            x = upsample2x(x)
        out = F.conv2d(x, self.weight[0], padding=self.padding)  # static weight (C_out, C_in, k, k)
        if factor is None and out_gain != 1.0:
            factor = torch.full((1, self.out_channels), out_gain, device=out.device)
        if factor is None:
            return out if out_bias is None else out + out_bias.to(out.dtype)
        factor = factor.to(out.dtype)[:, :, None, None]
        if out_bias is None:
            return out * factor
        return torch.addcmul(out_bias.to(out.dtype), out, factor)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"demodulate={self.demodulate}, upsample={self.upsample}")


def modulated_weight_layout(weight: Tensor, channels_last: bool) -> Tensor:
    """[1, C_out, C_in, k, k] stored so that weight[0] is channels-last (C_in fastest) or plain contiguous.

    oneDNN (CPU) and cuDNN run a channels-last conv about 1.5x faster when the weight is channels-last too
    (otherwise it is re-laid out on every call). Shape, values and state_dict keys do not change.
    """
    if not channels_last:
        return weight.contiguous()
    return weight.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def set_channels_last(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Store every conv weight of `model` channels-last (or plain); modules with a `channels_last`
    attribute (GFPGANv1Clean) also convert their input. Call before creating optimizers."""
    layout = torch.channels_last if enabled else torch.contiguous_format
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.weight.data = module.weight.data.contiguous(memory_format=layout)
        elif isinstance(module, ModulatedConv2d):
            module.weight.data = modulated_weight_layout(module.weight.data, enabled)
        if hasattr(module, "channels_last"):
            module.channels_last = enabled
    return model


def modulated_conv_reference(module: ModulatedConv2d, x: Tensor, style: Tensor) -> Tensor:
    """The paper's formulation: build per-sample modulated (and demodulated) weights, run one grouped conv.

    Kept as the ground truth for tests and as the baseline of benchmarks/bench_models.py.
    """
    b, c_in, _, _ = x.shape
    k = module.kernel_size
    scales = module.styles(style).view(b, 1, c_in, 1, 1)
    weight = module.weight * scales  # (B, C_out, C_in, k, k)
    if module.demodulate:
        demod = torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4)) + module.eps)  # (B, C_out)
        weight = weight * demod.view(b, module.out_channels, 1, 1, 1)
    weight = weight.reshape(b * module.out_channels, c_in, k, k)
    if module.upsample:
        x = upsample2x(x)
    h, w = x.shape[-2:]
    out = F.conv2d(x.reshape(1, b * c_in, h, w), weight, padding=module.padding, groups=b)
    return out.view(b, module.out_channels, *out.shape[-2:])


MODCONV_IMPLS = ("static", "grouped")


def set_modulated_conv_impl(model: nn.Module, impl: str) -> nn.Module:
    """Switch every ModulatedConv2d of `model` between the static-weight and the grouped-conv formulation."""
    if impl not in MODCONV_IMPLS:
        raise ValueError(f"impl must be one of {MODCONV_IMPLS}, got {impl!r}")
    for module in model.modules():
        if isinstance(module, ModulatedConv2d):
            module.impl = impl
    return model


class StyleConv(nn.Module):
    """Modulated conv * sqrt2 + per-pixel noise (learned strength) + bias, then LeakyReLU(0.2)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        num_style_feat: int,
        demodulate: bool = True,
        upsample: bool = False,
    ) -> None:
        super().__init__()
        self.modulated_conv = ModulatedConv2d(
            in_channels, out_channels, kernel_size, num_style_feat, demodulate=demodulate, upsample=upsample
        )
        self.weight = nn.Parameter(torch.zeros(1))  # noise strength
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: Tensor, style: Tensor, noise: Tensor | None = None) -> Tensor:
        """x (B, C_in, H, W), style (B, D), noise (B|1, 1, H', W') -> (B, C_out, H', W').

        noise None draws fresh N(0, 1) noise (the release behaviour).
        """
        out = self.modulated_conv(x, style, out_gain=SQRT2, out_bias=self.bias)  # conv * sqrt2 + bias
        if noise is None:
            b, _, h, w = out.shape
            noise = torch.randn(b, 1, h, w, device=out.device, dtype=out.dtype)
        # out is a fresh tensor that no backward formula reads, so in-place updates are safe.
        out = out.addcmul_(noise.to(out.dtype), self.weight.to(out.dtype))
        return F.leaky_relu_(out, LRELU_SLOPE)


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB without demodulation, + bias, + the previous RGB up-sampled x2."""

    def __init__(self, in_channels: int, num_style_feat: int, upsample: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.modulated_conv = ModulatedConv2d(in_channels, 3, 1, num_style_feat, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        """x (B, C, H, W), style (B, D), skip (B, 3, H/2, W/2) -> (B, 3, H, W)."""
        out = self.modulated_conv(x, style) + self.bias.to(x.dtype)
        if skip is not None:
            out = out + (upsample2x(skip) if self.upsample else skip)
        return out


class ConstantInput(nn.Module):
    """The learned 4x4 starting tensor of the synthesis network."""

    def __init__(self, channels: int, size: int = CONST_SIZE) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:  # -> (B, C, 4, 4)
        return self.weight.expand(batch, -1, -1, -1)


class StyleGAN2GeneratorClean(nn.Module):
    """StyleGAN2 generator in the clean layout (the GFP-GAN decoder / facial prior).

    Latents: `num_latent = 2 log2(out_size) - 2` style vectors (W+). Latent index: style_conv1 uses 0,
    to_rgb1 uses 1, level k uses 1+2k, 2+2k (convs) and 3+2k (toRGB).
    """

    def __init__(
        self,
        out_size: int,
        num_style_feat: int = 512,
        num_mlp: int = 8,
        channel_multiplier: float = 2,
        narrow: float = 1.0,
    ) -> None:
        super().__init__()
        self.out_size = out_size
        self.num_style_feat = num_style_feat
        self.log_size = log2_size(out_size)
        self.num_layers = (self.log_size - 2) * 2 + 1  # style convs, = number of noise inputs
        self.num_latent = self.log_size * 2 - 2
        self.fixed_noise = False  # deterministic mode: use the `noises.noise{i}` buffers by default

        mlp: list[nn.Module] = [NormStyleCode()]
        for _ in range(num_mlp):
            mlp += [nn.Linear(num_style_feat, num_style_feat), nn.LeakyReLU(LRELU_SLOPE, inplace=True)]
        self.style_mlp = nn.Sequential(*mlp)
        for layer in self.style_mlp:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, a=LRELU_SLOPE, mode="fan_in", nonlinearity="leaky_relu")
                nn.init.zeros_(layer.bias)

        channels = channel_table(channel_multiplier, narrow)
        self.channels = channels
        self.constant_input = ConstantInput(channels[CONST_SIZE])
        self.style_conv1 = StyleConv(channels[4], channels[4], 3, num_style_feat)
        self.to_rgb1 = ToRGB(channels[4], num_style_feat, upsample=False)

        self.noises = nn.Module()
        for layer_idx in range(self.num_layers):
            resolution = 2 ** ((layer_idx + 5) // 2)  # 4, 8, 8, 16, 16, ...
            self.noises.register_buffer(f"noise{layer_idx}", torch.randn(1, 1, resolution, resolution))

        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_channels = channels[4]
        for level in range(3, self.log_size + 1):
            out_channels = channels[2**level]
            self.style_convs.append(StyleConv(in_channels, out_channels, 3, num_style_feat, upsample=True))
            self.style_convs.append(StyleConv(out_channels, out_channels, 3, num_style_feat))
            self.to_rgbs.append(ToRGB(out_channels, num_style_feat, upsample=True))
            in_channels = out_channels

    # -- helpers ---------------------------------------------------------------------------------------------
    def fixed_noises(self) -> list[Tensor]:
        """The stored noise maps, one per style conv, (1, 1, H, W) each."""
        return [getattr(self.noises, f"noise{i}") for i in range(self.num_layers)]

    @torch.no_grad()
    def mean_latent(self, num_latent: int = 4096) -> Tensor:
        """Average W over random z (for truncation). -> (1, num_style_feat)."""
        z = torch.randn(num_latent, self.num_style_feat, device=self.constant_input.weight.device)
        return self.style_mlp(z).mean(0, keepdim=True)

    def get_latent(self, z: Tensor) -> Tensor:  # (B, D) -> (B, D)
        return self.style_mlp(z)

    def latent_plus(
        self,
        styles: Sequence[Tensor] | Tensor,
        input_is_latent: bool = False,
        truncation: float = 1.0,
        truncation_latent: Tensor | None = None,
        inject_index: int | None = None,
    ) -> Tensor:
        """Codes -> W+ (B, num_latent, D). One code is broadcast to every layer; two codes are mixed at
        `inject_index` (random when None); an already-(B, num_latent, D) tensor is used as is."""
        if isinstance(styles, Tensor):
            styles = [styles]
        if not input_is_latent:  # map z -> w, code by code (a (B, N, D) W+ input is mapped per code)
            styles = [self.style_mlp(s.flatten(0, -2)).view_as(s) for s in styles]
        if truncation < 1.0:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent (see mean_latent())")
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]
        if len(styles) == 1:
            code = styles[0]
            if code.dim() == 3:
                if code.shape[1] != self.num_latent:
                    raise ValueError(f"W+ latent needs {self.num_latent} codes, got {code.shape[1]}")
                return code
            return code.unsqueeze(1).expand(-1, self.num_latent, -1)
        if len(styles) != 2:
            raise ValueError("style mixing takes at most two codes")
        if inject_index is None:
            inject_index = int(torch.randint(1, self.num_latent, ()).item())
        first = styles[0].unsqueeze(1).expand(-1, inject_index, -1)
        second = styles[1].unsqueeze(1).expand(-1, self.num_latent - inject_index, -1)
        return torch.cat([first, second], dim=1)

    def noise_inputs(self, noise: Sequence[Tensor | None] | None, randomize_noise: bool | None) -> list:
        """Noise per style conv: the given list, fresh noise (None entries) or the stored maps."""
        if noise is not None:
            return list(noise)
        if randomize_noise is None:
            randomize_noise = not self.fixed_noise
        return [None] * self.num_layers if randomize_noise else self.fixed_noises()

    def synthesis(
        self,
        latent: Tensor,
        noise: Sequence[Tensor | None],
        conditions: Sequence[Tensor] | None = None,
        sft_half: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """W+ (B, num_latent, D) -> (image (B, 3, S, S), last features (B, C, S, S)).

        `conditions` (scale_0, shift_0, scale_1, ...) applies spatial feature transforms after the first conv
        of each level (GFP-GAN's CS-SFT): with `sft_half` only the second half of the channels is modulated.
        """
        out = self.constant_input(latent.shape[0])  # (B, 512n, 4, 4)
        out = self.style_conv1(out, latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1])  # (B, 3, 4, 4)
        for level, to_rgb in enumerate(self.to_rgbs):
            i = 1 + 2 * level
            out = self.style_convs[2 * level](out, latent[:, i], noise=noise[i])  # (B, C, 2H, 2W)
            if conditions is not None and 2 * level + 1 < len(conditions):
                scale, shift = conditions[2 * level], conditions[2 * level + 1]
                out = spatial_feature_transform(out, scale, shift, sft_half)
            out = self.style_convs[2 * level + 1](out, latent[:, i + 1], noise=noise[i + 1])
            skip = to_rgb(out, latent[:, i + 2], skip)
        return skip, out

    def forward(
        self,
        styles: Sequence[Tensor] | Tensor,
        input_is_latent: bool = False,
        noise: Sequence[Tensor | None] | None = None,
        randomize_noise: bool | None = None,
        truncation: float = 1.0,
        truncation_latent: Tensor | None = None,
        inject_index: int | None = None,
        return_latents: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Codes -> (image (B, 3, S, S), W+ latent if return_latents else None).

        randomize_noise None follows `self.fixed_noise` (False: fresh noise, the release behaviour).
        """
        latent = self.latent_plus(styles, input_is_latent, truncation, truncation_latent, inject_index)
        image, _ = self.synthesis(latent, self.noise_inputs(noise, randomize_noise))
        return image.contiguous(), (latent if return_latents else None)


def equalized_lr_multipliers(generator: StyleGAN2GeneratorClean,
                             mapping_lr_mul: float = MAPPING_LR_MUL) -> dict[str, float]:
    """Per-parameter learning-rate multipliers that train the clean layout as StyleGAN2 trains its own.

    StyleGAN2 stores weights as N(0, 1) / lr_mul and scales them by lr_mul / sqrt(fan_in) at run time (equalised
    learning rate); the clean layout stores the scaled weight itself. Adam's step is about lr in a parameter's own
    units, so the same optimiser on the clean layout moves every weight sqrt(fan_in) times (the mapping network's
    100 * sqrt(fan_in) times) further relative to its size. Multiplying each weight's lr by its run-time scale
    restores StyleGAN2's steps; biases get lr_mul (the mapping's 0.01), everything else 1.
    """
    multipliers: dict[str, float] = {}
    for name, module in generator.named_modules():
        if isinstance(module, nn.Linear):
            lr_mul = mapping_lr_mul if name.startswith("style_mlp.") else 1.0
            multipliers[f"{name}.weight"] = lr_mul / math.sqrt(module.in_features)
            multipliers[f"{name}.bias"] = lr_mul
        elif isinstance(module, ModulatedConv2d):
            multipliers[f"{name}.weight"] = 1 / math.sqrt(module.in_channels * module.kernel_size**2)
    return {name: multipliers.get(name, 1.0) for name, _ in generator.named_parameters()}


def noise_strength_names(generator: StyleGAN2GeneratorClean) -> set[str]:
    """Parameter names of the generator's learned noise strengths (one scalar per StyleConv)."""
    return {f"{name}.weight" for name, module in generator.named_modules() if isinstance(module, StyleConv)}


def spatial_feature_transform(feat: Tensor, scale: Tensor, shift: Tensor, sft_half: bool) -> Tensor:
    """SFT: feat * scale + shift; with sft_half only the second channel half (the first passes unchanged).

    feat (B, C, H, W); scale, shift (B, C/2 or C, H, W).
    """
    if not sft_half:
        return feat * scale + shift
    same, modulated = feat.split(feat.shape[1] // 2, dim=1)
    if not (torch.is_grad_enabled() and feat.requires_grad):  # inference: modulate in place, no copy
        modulated.mul_(scale).add_(shift)
        return feat
    return torch.cat([same, modulated * scale + shift], dim=1)  # same arithmetic as the in-place path


# ------------------------------------------------------------------------------------------------------------
# Discriminator (original StyleGAN2 layout, plain PyTorch)
# ------------------------------------------------------------------------------------------------------------


def blur_kernel_2d(kernel: Sequence[float] = BLUR_KERNEL) -> Tensor:
    """Outer product of a 1-D binomial kernel, normalised to sum 1. -> (k, k)."""
    k = torch.tensor(kernel, dtype=torch.float32)
    k2 = k[:, None] * k[None, :]
    return k2 / k2.sum()


class Blur(nn.Module):
    """Depthwise FIR low-pass with explicit padding (upfirdn2d with up = down = 1, in plain torch)."""

    def __init__(self, channels: int, pad: tuple[int, int], kernel: Sequence[float] = BLUR_KERNEL) -> None:
        super().__init__()
        self.channels = channels
        self.pad = pad
        # The kernel is symmetric, so correlation (conv2d) equals upfirdn's true convolution.
        k2 = blur_kernel_2d(kernel)
        self.register_buffer("kernel", k2.expand(channels, 1, *k2.shape).clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H + sum(pad) - k + 1, ...)
        p0, p1 = self.pad
        x = F.pad(x, (p0, p1, p0, p1))
        return F.conv2d(x, self.kernel.to(x.dtype), groups=self.channels)


class EqualConv2d(nn.Module):
    """Conv with equalised learning rate: N(0, 1) weights scaled by 1/sqrt(fan_in) at run time."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.stride = stride
        self.padding = padding
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return (f"{i}, {o}, kernel_size={k}, stride={self.stride}, padding={self.padding}, "
                f"bias={self.bias is not None}")


class EqualLinear(nn.Module):
    """Linear with equalised learning rate (and learning-rate multiplier), optionally fused bias + lrelu."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, bias_init: float = 0.0,
        lr_mul: float = 1.0, activate: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activate:
            out = F.linear(x, self.weight * self.scale)
            return fused_leaky_relu(out, bias)
        return F.linear(x, self.weight * self.scale, bias)


def fused_leaky_relu(x: Tensor, bias: Tensor | None) -> Tensor:
    """lrelu(x + bias, 0.2) * sqrt 2 (the "fused" activation of StyleGAN2, in plain torch)."""
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.dim() - 2)))
    return F.leaky_relu(x, LRELU_SLOPE) * SQRT2


class FusedLeakyReLU(nn.Module):
    """Holds the bias of the preceding (bias-free) conv: lrelu(x + b) * sqrt2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias)


class ConvLayer(nn.Sequential):
    """[Blur] -> EqualConv2d -> [FusedLeakyReLU]; down-sampling blurs then convolves with stride 2."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, downsample: bool = False,
        bias: bool = True, activate: bool = True, blur_kernel: Sequence[float] = BLUR_KERNEL,
    ) -> None:
        layers: list[nn.Module] = []
        if downsample:
            factor = 2
            pad = (len(blur_kernel) - factor) + (kernel_size - 1)
            layers.append(Blur(in_channels, ((pad + 1) // 2, pad // 2), blur_kernel))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        conv_bias = bias and not activate  # with an activation the bias lives in FusedLeakyReLU
        layers.append(EqualConv2d(in_channels, out_channels, kernel_size, stride, padding, bias=conv_bias))
        if activate:
            layers.append(FusedLeakyReLU(out_channels) if bias else _ScaledLeakyReLU())
        super().__init__(*layers)


class _ScaledLeakyReLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, LRELU_SLOPE) * SQRT2


class DiscriminatorResBlock(nn.Module):
    """conv3x3 -> conv3x3 down, plus a blurred 1x1 down skip; sum / sqrt2 keeps the variance."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_channels, in_channels, 3)
        self.conv2 = ConvLayer(in_channels, out_channels, 3, downsample=True)
        self.skip = ConvLayer(in_channels, out_channels, 1, downsample=True, bias=False, activate=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C_out, H/2, W/2)
        return (self.conv2(self.conv1(x)) + self.skip(x)) / SQRT2


def minibatch_stddev(x: Tensor, group_size: int = STDDEV_GROUP, num_feat: int = STDDEV_FEAT) -> Tensor:
    """Append the average std over sample groups as extra channels. (B, C, H, W) -> (B, C + num_feat, H, W).

    The group is the largest divisor of B not above `group_size` (the reference needs B % group == 0).
    """
    b, c, h, w = x.shape
    group = max(g for g in range(1, min(b, group_size) + 1) if b % g == 0)
    y = x.float().view(group, -1, num_feat, c // num_feat, h, w)
    y = torch.sqrt(y.var(0, unbiased=False) + PIXEL_NORM_EPS)  # (B/group, F, C/F, H, W)
    y = y.mean(dim=(2, 3, 4), keepdim=True).squeeze(2)  # (B/group, F, 1, 1)
    y = y.repeat(group, 1, h, w).to(x.dtype)
    return torch.cat([x, y], dim=1)


class StyleGAN2Discriminator(nn.Module):
    """Residual StyleGAN2 discriminator: S px -> logits (B, 1)."""

    def __init__(
        self, out_size: int, channel_multiplier: float = 2, narrow: float = 1.0,
        stddev_group: int = STDDEV_GROUP, stddev_feat: int = STDDEV_FEAT,
    ) -> None:
        super().__init__()
        channels = channel_table(channel_multiplier, narrow)
        log_size = log2_size(out_size)
        self.stddev_group = stddev_group
        self.stddev_feat = stddev_feat
        body: list[nn.Module] = [ConvLayer(3, channels[out_size], 1)]
        in_channels = channels[out_size]
        for level in range(log_size, 2, -1):
            out_channels = channels[2 ** (level - 1)]
            body.append(DiscriminatorResBlock(in_channels, out_channels))
            in_channels = out_channels
        self.conv_body = nn.Sequential(*body)
        self.final_conv = ConvLayer(in_channels + stddev_feat, channels[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(channels[4] * CONST_SIZE * CONST_SIZE, channels[4], activate=True),
            EqualLinear(channels[4], 1),
        )

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, S, S) -> (B, 1)
        out = self.conv_body(x)  # (B, 512n, 4, 4)
        out = minibatch_stddev(out, self.stddev_group, self.stddev_feat)
        out = self.final_conv(out)
        return self.final_linear(out.flatten(1))
