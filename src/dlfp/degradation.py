"""The GFP-GAN degradation model (gfpgan-spec section 3): a preset's parameters -> the ops applied to one face.

The one file to open to change the degradation model. One function, `degrade(gt, params, seed)`, serves both
the degrade stage (dlfp.stages.degrade, fixed val/test pairs) and training (dlfp.train.data), so test pairs and
training pairs come from the same code. Every random choice derives from `seed` alone (see `sample_seed`): a pair
never depends on the process, the worker count or the order in which samples are processed.

How the steps are built, in the spec's order:
1-3. Blur, downscale and noise are our own code on a numpy Generator seeded with `seed`, because no
     albumentations 2.0.8 transform fits exactly *and* reports its scalars:
     - A.AdvancedBlur draws sigma_x and sigma_y independently (no isotropic case with sigma_x = sigma_y),
       multiplies the kernel by noise unless disabled, and its applied params hold only the kernel array.
     - A.Downscale draws the *inverse* factor uniformly (U(1/8, 1/0.8) is not s ~ U(0.8, 8)), rejects
       factors above 1 (s < 1 upscales), and uses nearest interpolation by default.
     - A.GaussNoise reports only the noise map, not the sigma it drew.
4-6. JPEG, resize back, colour shift, grey and colour jitter are albumentations transforms in one
     `A.Compose(strict=True)`; the JPEG step sees BGR, as OpenCV and the reference expect
     (`RGBImageCompression`). Their randomness comes from one shared generator pair handed over with
     `Compose.set_random_state`: `Compose.set_random_seed(seed)` seeds every transform with the *same*
     seed, so their p-draws coincide (colour shift would be applied exactly when jitter is, p 0.3 each).
7.   Quantisation to 8 bit, as in the reference (round, clip).

A preset with a `reference_size` (the `paper` preset: 512 px) has its lengths (blur sigma, kernel radius,
downscale factor) scaled to the GT's side, so that its LQ faces are the reference's seen at that side;
`size_scale` says what is scaled and why. The scale is logged with every sample and in the pairs index.

The image is float32 in [0, 1] between steps, like the published BasicSR/GFPGAN code.

Imports numpy, OpenCV, albumentations, dlfp.io.hashing and dlfp.params only.
"""

from __future__ import annotations

import functools
import math
import random

import albumentations as A
import cv2
import numpy as np

from dlfp.io.hashing import derive_seed
from dlfp.io.images import MAX_8BIT
from dlfp.params import DegradationParams

BORDER = cv2.BORDER_REFLECT_101  # cv2.filter2D's default, as in the reference
INTERPOLATION = cv2.INTER_LINEAR
# Kernel taps below this fraction of the kernel sum are dropped before filtering. They change no output
# value by more than ~1e-8 (below float32 rounding of a [0, 1] image), and skipping them makes small-sigma
# blurs much cheaper; the kernel itself is still the spec's 41 x 41 one.
NEGLIGIBLE_TAP = 1e-10
SEED_NAMESPACE = "degrade"
POST_NAMESPACE = "albumentations"
JITTER_NAMES = ("brightness", "contrast", "saturation", "hue")


# ------------------------------------------------------------------------------------------- seeding
def sample_seed(global_seed: int, sample_id: str, tag: str) -> int:
    """Seed of one degraded sample: tag is the preset name (test pairs) or e.g. f"epoch{n}" (training).

    A fixed namespace keeps this stream apart from other per-sample draws (split, flips) on the same id.
    """
    return derive_seed(global_seed, SEED_NAMESPACE, sample_id, tag)


# ------------------------------------------------------------------------------------- size scaling
def size_scale(params: DegradationParams, size: int) -> float | None:
    """r = size / params.reference_size, how a preset's lengths map onto a `size` px face; None: not scaled.

    A preset with a reference size (the paper's: 512 px) describes faces of that side. At another side N the
    same degraded face is the reference LQ seen at N px, so what is a length on the face scales by r, and
    nothing else does:
    - blur sigma and the blur kernel's radius are lengths in pixels: times r;
    - the downscale factor s makes an LQ of 512/s px; s * r makes the same LQ width at N px. A factor below 1
      would only upsample a GT that holds no detail beyond N px, so for r < 1 it is floored at 1 (at 128 px:
      every s < 4, where the paper's LQ is finer than our GT and would show no resolution loss at 128 px);
    - noise sigma and JPEG quality act per LQ pixel in intensity units, on an LQ grid that is now the paper's:
      unchanged. Where the factor is floored they act on the N px grid, coarser than the paper's, so those
      draws are somewhat harsher than the paper's seen at N px, never milder;
    - colour shift, grey and jitter do not depend on size.
    """
    return None if params.reference_size is None else size / params.reference_size


def size_scaling(params: DegradationParams, size: int) -> dict:
    """The scaling of a preset at `size` px, as the pairs index records it (scale None: ranges as given)."""
    return {"reference_size": params.reference_size, "data_size": size, "scale": size_scale(params, size)}


def scaled_kernel_size(kernel_size: int, scale: float | None) -> int:
    """Odd kernel side with the radius scaled by `scale` (41 at 512 px -> 11 at 128 px), at least 3."""
    if scale is None:
        return kernel_size
    return 2 * max(1, math.floor(kernel_size // 2 * scale + 0.5)) + 1


def scaled_downscale(factor: float, scale: float | None) -> float:
    """The downscale factor times `scale`; floored at 1 when scaling down (see size_scale)."""
    if scale is None:
        return factor
    return max(1.0, factor * scale) if scale < 1 else factor * scale


# -------------------------------------------------------------------------------------- blur kernel
def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, angle: float) -> np.ndarray:
    """Normalised bivariate Gaussian on a size x size grid, as BasicSR's `bivariate_Gaussian`."""
    axis = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
    xx, yy = np.meshgrid(axis, axis)
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    covariance = rotation @ np.diag([sigma_x**2, sigma_y**2]) @ rotation.T
    inverse = np.linalg.inv(covariance)
    exponent = inverse[0, 0] * xx * xx + 2 * inverse[0, 1] * xx * yy + inverse[1, 1] * yy * yy
    kernel = np.exp(-0.5 * exponent)
    return kernel / kernel.sum()


def gaussian_taps(size: int, sigma: float) -> np.ndarray:
    """1-D factor of the isotropic kernel: outer(taps, taps) equals gaussian_kernel(size, s, s, 0)."""
    axis = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (axis / sigma) ** 2)
    return taps / taps.sum()


def _trim_1d(taps: np.ndarray) -> np.ndarray:
    """Drop negligible outer taps symmetrically (the kernel stays odd and centred)."""
    keep = np.flatnonzero(taps >= NEGLIGIBLE_TAP)
    radius = max(len(taps) // 2 - int(keep[0]), int(keep[-1]) - len(taps) // 2)
    centre = len(taps) // 2
    return taps[centre - radius: centre + radius + 1]


def _trim_2d(kernel: np.ndarray) -> np.ndarray:
    rows = _trim_1d(kernel.max(axis=1))
    cols = _trim_1d(kernel.max(axis=0))
    radius = max(len(rows), len(cols)) // 2
    centre = kernel.shape[0] // 2
    return kernel[centre - radius: centre + radius + 1, centre - radius: centre + radius + 1]


def blur(img: np.ndarray, kernel_size: int, sigma_x: float, sigma_y: float, angle: float,
         iso: bool) -> np.ndarray:
    """Isotropic kernels are separable, so they run as two 1-D passes (same kernel, about 4x cheaper)."""
    if iso:
        taps = _trim_1d(gaussian_taps(kernel_size, sigma_x)).astype(np.float32)
        return cv2.sepFilter2D(img, -1, taps, taps, borderType=BORDER)
    kernel = _trim_2d(gaussian_kernel(kernel_size, sigma_x, sigma_y, angle)).astype(np.float32)
    return cv2.filter2D(img, -1, kernel, borderType=BORDER)


# ------------------------------------------------------------------------------- post-resize steps
def _uint_range(low: float, high: float) -> tuple[int, int]:
    """JPEG quality is an int (OpenCV 5 rejects floats): the integers inside [low, high]."""
    bounds = math.ceil(low), math.floor(high)
    if bounds[0] > bounds[1]:
        raise ValueError(f"jpeg_quality range [{low}, {high}] contains no integer quality")
    return bounds


def _shift_fraction(params: DegradationParams) -> tuple[float, float]:
    """Colour shift in 0..255 units as a fraction of the range, for RGBShift."""
    low, high = params.color_shift
    if max(abs(low), abs(high)) > MAX_8BIT:
        # RGBShift would read a fraction above 1 as 0..255 units and divide it again.
        raise ValueError(f"color_shift [{low}, {high}] must lie within -255..255")
    return low / MAX_8BIT, high / MAX_8BIT


class RGBImageCompression(A.ImageCompression):
    """ImageCompression for RGB arrays: red and blue are swapped to BGR around OpenCV's JPEG codec.

    albumentations 2.0.8 hands the array to cv2.imencode as it is, and OpenCV reads it as BGR: an RGB image
    would get its luma and chroma from swapped channels, so chroma errors would land on the wrong colours.
    The reference (BasicSR) compresses BGR images. The quality is drawn and logged as by ImageCompression.
    """

    def apply(self, img: np.ndarray, quality: int, image_type: str, **params: object) -> np.ndarray:
        bgr = np.ascontiguousarray(img[..., ::-1])
        return np.ascontiguousarray(super().apply(bgr, quality, image_type, **params)[..., ::-1])


@functools.lru_cache(maxsize=32)
def _post_compose(params: DegradationParams, height: int, width: int) -> A.Compose:
    """Steps 4-6 as albumentations transforms; cached per preset and size (building one costs ~1 ms)."""
    shift = _shift_fraction(params)
    quality = _uint_range(*params.jpeg_quality)
    return A.Compose(
        [
            RGBImageCompression(quality_range=quality, compression_type="jpeg", p=1.0),
            A.Resize(height, width, interpolation=INTERPOLATION, p=1.0),
            # Limits are passed as fractions: RGBShift reinterprets any limit above 1 as 0..255 units.
            A.RGBShift(r_shift_limit=shift, g_shift_limit=shift, b_shift_limit=shift,
                       p=params.color_shift_prob),
            A.ToGray(num_output_channels=3, method="weighted_average", p=params.gray_prob),
            # hue is set explicitly: ColorJitter's default is +-0.5, not the spec's +-0.1.
            A.ColorJitter(brightness=params.brightness, contrast=params.contrast,
                          saturation=params.saturation, hue=params.hue, p=params.jitter_prob),
        ],
        strict=True,
        save_applied_params=True,
    )


def _post_applied(applied_transforms: list[tuple[str, dict]]) -> dict:
    """Scalars of the albumentations steps; a transform that was not applied is absent from the list."""
    by_name = {name: values for name, values in applied_transforms}
    shift = by_name.get("RGBShift")
    jitter = by_name.get("ColorJitter")
    return {
        "jpeg_quality": int(by_name[RGBImageCompression.__name__]["quality"]),
        "color_shift": None if shift is None else [float(v) * MAX_8BIT for v in shift["noise_map"]],
        "gray": "ToGray" in by_name,
        "jitter": None if jitter is None else {
            **{name: float(jitter[name]) for name in JITTER_NAMES},
            "order": [JITTER_NAMES[int(i)] for i in jitter["order"]],
        },
    }


# ---------------------------------------------------------------------------------------- degrade
def quantise(img: np.ndarray) -> np.ndarray:
    """[0, 1] float to 8 bit by rounding, as the reference's clamp((x * 255).round()); in place (faster)."""
    scaled = img * np.float32(MAX_8BIT)
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, MAX_8BIT, out=scaled)
    return scaled.astype(np.uint8)


def _check_gt(gt: np.ndarray) -> None:
    if gt.dtype != np.uint8 or gt.ndim != 3 or gt.shape[2] != 3:
        raise ValueError(f"degrade expects an (H, W, 3) uint8 RGB image, got {gt.shape} {gt.dtype}")


def degrade(gt: np.ndarray, params: DegradationParams, seed: int) -> tuple[np.ndarray, dict]:
    """Synthesise the LQ image of `gt` (uint8 RGB) and return it with every scalar that was applied.

    Lengths are scaled to gt's width when the preset has a reference size (`size_scale`); the logged sigmas,
    kernel size and downscale factor are the applied ones, with the scale as `size_scale`.

    Not thread-safe (the albumentations Compose is cached per process and re-seeded per call): parallelise
    with processes, as the stage and DataLoader workers do.
    """
    _check_gt(gt)
    height, width = gt.shape[:2]
    rng = np.random.default_rng(seed)
    # All scalars are drawn up front in a fixed order, so the stream never depends on the image size; the
    # lengths among them are then scaled to this image's size if the preset has a reference size.
    iso = bool(rng.random() < params.kernel_iso_prob)
    sigma_x = float(rng.uniform(*params.blur_sigma))
    sigma_y_draw = float(rng.uniform(*params.blur_sigma))
    angle_draw = float(rng.uniform(-math.pi, math.pi))
    sigma_y, angle = (sigma_x, 0.0) if iso else (sigma_y_draw, angle_draw)
    scale = float(rng.uniform(*params.downscale))
    noise_sigma = float(rng.uniform(*params.noise_sigma))
    length_scale = size_scale(params, width)
    if length_scale is not None:
        sigma_x, sigma_y = sigma_x * length_scale, sigma_y * length_scale
        scale = scaled_downscale(scale, length_scale)
    kernel_size = scaled_kernel_size(params.kernel_size, length_scale)

    img = gt.astype(np.float32) / np.float32(MAX_8BIT)
    img = blur(img, kernel_size, sigma_x, sigma_y, angle, iso)
    small = (max(1, int(width // scale)), max(1, int(height // scale)))
    img = cv2.resize(img, small, interpolation=INTERPOLATION)
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise_sigma / MAX_8BIT)
    img = np.clip(img + noise, 0.0, 1.0, out=img)

    post = _post_compose(params, height, width)
    post_seed = derive_seed(seed, POST_NAMESPACE)
    post.set_random_state(np.random.default_rng(post_seed), random.Random(post_seed))
    result = post(image=img)
    lq = quantise(result["image"])

    applied = {
        "kernel": "iso" if iso else "aniso",
        "size_scale": length_scale,
        "kernel_size": kernel_size,
        "sigma_x": sigma_x,
        "sigma_y": sigma_y,
        "angle": angle,
        "scale": scale,
        "lq_size": [small[0], small[1]],
        "noise_sigma": noise_sigma,
        **_post_applied(result["applied_transforms"]),
    }
    return lq, applied
