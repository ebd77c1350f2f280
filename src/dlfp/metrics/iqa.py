"""Image-quality metrics of the evaluate stage: pyiqa's PSNR, SSIM, LPIPS, NIQE and FID, offline, with reasons.

pyiqa metrics (PSNR, SSIM, LPIPS, NIQE, FID) run only when every weight file pyiqa would download is already in
$TORCH_HOME/hub/pyiqa or $TORCH_HOME/hub/checkpoints, checked by exact file name *before* pyiqa is asked to
build the metric; a missing file makes the metric "not computed: <file> missing ...", never a number. While a
pyiqa metric is built, downloads are refused outright, so nothing ever reaches for the network.

Conventions, recorded in the stage's summary:
- PSNR: pyiqa "psnr", RGB, data range 1, mse + 1e-8 in the denominator, so identical images give 80 dB (a cap,
  not infinity).
- SSIM: pyiqa "ssim", on the Y channel of YIQ (pyiqa's default: test_y_channel, color_space yiq), Y scaled to
  0..255 and rounded, Gaussian window 11 / sigma 1.5, no downsampling.

The identity, landmark and Frechet-distance metrics live beside this module (identity.py, landmarks.py,
frechet.py). May import torch, pyiqa, cv2 and numpy; nothing from dlfp's stages.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import cv2
import numpy as np
import torch

from dlfp.layout import NOT_COMPUTED

log = logging.getLogger(__name__)

PSNR_CAP_DB = 80.0  # pyiqa: 10 log10(1 / (0 + 1e-8)) for identical images
PYIQA_FOLDER = "pyiqa"  # under torch.hub.get_dir(): pyiqa's own weights
TORCHVISION_FOLDER = "checkpoints"  # under torch.hub.get_dir(): torchvision's backbone weights
PAIR_METRICS = ("psnr", "ssim", "lpips")  # full-reference, per image
NR_METRICS = ("niqe",)  # no-reference, per image
SET_METRICS = ("fid",)  # between folders
PYIQA_METRICS = PAIR_METRICS + NR_METRICS + SET_METRICS
FID_BATCH = 16


# ------------------------------------------------------------------------------- pyiqa weight files
def hub_dir() -> Path:
    """torch's hub folder, read now ($TORCH_HOME/hub unless torch.hub.set_dir was called)."""
    return Path(torch.hub.get_dir())


def _basename(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def required_weight_files(name: str) -> list[tuple[Path, str]]:
    """(path, url) of every file pyiqa would download to build metric `name`, from pyiqa's own constants."""
    hub = hub_dir()
    if name in ("psnr", "ssim"):
        return []
    if name == "lpips":  # LPIPS v0.1 on AlexNet (pyiqa's default): linear heads + torchvision's AlexNet
        import torchvision
        from pyiqa.archs import lpips_arch

        heads = lpips_arch.default_model_urls["0.1_alex"]
        alexnet = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url
        return [(hub / PYIQA_FOLDER / _basename(heads), heads),
                (hub / TORCHVISION_FOLDER / _basename(alexnet), alexnet)]
    if name == "niqe":
        from pyiqa.archs import niqe_arch

        url = niqe_arch.default_model_urls["url"]
        return [(hub / PYIQA_FOLDER / _basename(url), url)]
    if name == "fid":
        from pyiqa.archs import inception

        url = inception.FID_WEIGHTS_URL
        return [(hub / PYIQA_FOLDER / _basename(url), url)]
    raise ValueError(f"unknown pyiqa metric {name!r}")


def missing_weights_reason(name: str) -> str | None:
    """None when every file is present, else 'not computed: <file> missing from <folder> ...'."""
    for path, url in required_weight_files(name):
        if not path.is_file():
            return (f"{NOT_COMPUTED}: {path.name} missing from {path.parent} (pyiqa downloads it from {url}; "
                    "place the file there to compute this metric)")
    return None


def _refuse_download(url: str, *args: object, **kwargs: object) -> None:
    raise RuntimeError(f"dl-fp refused a download during metric set-up: {url}")


@contextlib.contextmanager
def _offline_pyiqa() -> Iterator[None]:
    """pyiqa fixes its cache folder at import time; point it at the folder we checked and refuse downloads."""
    from pyiqa.utils import download_util

    saved = (download_util.DEFAULT_CACHE_DIR, download_util.download_url_to_file, torch.hub.download_url_to_file)
    download_util.DEFAULT_CACHE_DIR = str(hub_dir() / PYIQA_FOLDER)
    download_util.download_url_to_file = _refuse_download
    torch.hub.download_url_to_file = _refuse_download
    try:
        yield
    finally:
        download_util.DEFAULT_CACHE_DIR, download_util.download_url_to_file, torch.hub.download_url_to_file = saved


def create_pyiqa_metric(name: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Build a pyiqa metric from local files only; raise FileNotFoundError with the reason when one is missing."""
    reason = missing_weights_reason(name)
    if reason is not None:
        raise FileNotFoundError(reason)
    import pyiqa

    options: dict = {}
    files = required_weight_files(name)
    if name in ("lpips", "niqe"):
        options["pretrained_model_path"] = str(files[0][0])
    with _offline_pyiqa():
        return pyiqa.create_metric(name, device=torch.device(device), **options)


# ------------------------------------------------------------------------------------ metric registry
@dataclass
class MetricInfo:
    """A metric's settings and whether it runs here (reason is the 'not computed: ...' text when not)."""

    name: str
    settings: dict
    reason: str | None = None
    compute: Callable | None = field(default=None, repr=False)

    @property
    def available(self) -> bool:
        return self.reason is None


# What PSNR and SSIM are computed on (pyiqa's defaults: "psnr" test_y_channel False, "ssim" test_y_channel True
# with color_space "yiq"; the OpenCV SSIM backend takes pyiqa's own Y channel): shown wherever they are.
COLOUR_SPACES = {"psnr": "RGB", "ssim": "Y of YIQ"}
SETTINGS = {
    "psnr": {"library": "pyiqa", "name": "psnr", "channels": "RGB", "colour_space": COLOUR_SPACES["psnr"],
             "data_range": 1.0, "eps": 1e-8, "identical_images_db": PSNR_CAP_DB},
    "ssim": {"library": "pyiqa", "name": "ssim", "test_y_channel": True, "color_space": "yiq",
             "colour_space": COLOUR_SPACES["ssim"], "downsample": False,
             "window": "gaussian 11, sigma 1.5", "y_range": "0..255 rounded"},
    "lpips": {"library": "pyiqa", "name": "lpips", "net": "alex", "version": "0.1"},
    "niqe": {"library": "pyiqa", "name": "niqe", "test_y_channel": True},
    "fid": {"library": "pyiqa", "name": "fid", "mode": "clean", "between": "restored set vs GT set (folders)"},
}


def build_pyiqa_metrics(device: torch.device | str = "cpu", ssim_backend: str = "opencv") -> dict[str, MetricInfo]:
    """Every pyiqa metric of the registry, available or with its 'not computed' reason."""
    if ssim_backend not in SSIM_BACKENDS:
        raise ValueError(f"unknown SSIM backend {ssim_backend!r}; choose from {SSIM_BACKENDS}")
    infos = {}
    for name in PYIQA_METRICS:
        info = MetricInfo(name, dict(SETTINGS[name]))
        info.reason = missing_weights_reason(name)
        if name == "ssim":
            info.settings["backend"] = ssim_backend
        if name == "ssim" and ssim_backend == "opencv":
            info.compute = ssim_pyiqa_equivalent
        elif info.available:
            try:
                info.compute = create_pyiqa_metric(name, device)
            except Exception as error:  # noqa: BLE001 - a metric that cannot be built is reported, never faked
                info.reason = f"{NOT_COMPUTED}: pyiqa could not build it ({type(error).__name__}: {error})"
        if not info.available:
            log.warning("evaluate: %s %s", name, info.reason)
        infos[name] = info
    return infos


# SSIM exactly as pyiqa defines it ("ssim": Y of YIQ scaled to 0..255 and rounded, Gaussian window 11 / 1.5,
# "valid" filtering, C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, negative contrast-structure terms clipped to 0, in
# float64), with OpenCV's separable filter in place of pyiqa's float64 torch conv2d: on a 2-core CPU the latter
# takes ~0.35 s per 256 px image, ~25 min for a 4,000-image evaluation. The Y channel comes from pyiqa's own
# preprocessing. Both agree to ~1e-6 (pyiqa rounds its window to float32); tests/test_evaluate.py checks 1e-5.
SSIM_WINDOW, SSIM_SIGMA, SSIM_RANGE = 11, 1.5, 255.0
SSIM_BACKENDS = ("opencv", "pyiqa")


def _gaussian_taps(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    half = (size - 1) / 2.0
    axis = np.arange(-half, half + 1)
    taps = np.exp(-(axis * axis) / (2.0 * sigma * sigma))
    return taps / taps.sum()


def ssim_pyiqa_equivalent(restored: torch.Tensor, gt: torch.Tensor) -> np.ndarray:
    """pyiqa's SSIM of (B, 3, H, W) [0, 1] batches -> (B,) float64, filtered with OpenCV (see above)."""
    from pyiqa.archs.func_util import preprocess_rgb

    taps = _gaussian_taps()
    crop = SSIM_WINDOW // 2
    c1, c2 = (0.01 * SSIM_RANGE) ** 2, (0.03 * SSIM_RANGE) ** 2

    def y_channel(images: torch.Tensor) -> np.ndarray:
        return preprocess_rgb(images, True, SSIM_RANGE, "yiq").to(torch.float64)[:, 0].cpu().numpy()

    def valid(image: np.ndarray) -> np.ndarray:
        return cv2.sepFilter2D(image, cv2.CV_64F, taps, taps, borderType=cv2.BORDER_CONSTANT)[crop:-crop, crop:-crop]

    scores = []
    for x, y in zip(y_channel(restored), y_channel(gt), strict=True):
        mu_x, mu_y = valid(x), valid(y)
        var_x = valid(x * x) - mu_x * mu_x
        var_y = valid(y * y) - mu_y * mu_y
        cov = valid(x * y) - mu_x * mu_y
        cs = np.maximum((2 * cov + c2) / (var_x + var_y + c2), 0.0)
        scores.append(float((((2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)) * cs).mean()))
    return np.asarray(scores, np.float64)


def to_unit_tensor(images: Sequence[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 RGB (H, W, 3) images of one size -> contiguous float32 (B, 3, H, W) in [0, 1]."""
    batch = torch.from_numpy(np.stack(images)).to(device)
    return batch.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


@torch.inference_mode()
def pair_scores(metric: Callable, restored: torch.Tensor, gt: torch.Tensor) -> np.ndarray:
    """A full-reference metric (pyiqa's, or the SSIM above) on a batch -> (B,) float64."""
    scores = metric(restored, gt)
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().reshape(-1).double().cpu().numpy()
    return np.asarray(scores, np.float64)


@torch.inference_mode()
def no_reference_scores(metric: Callable, images: torch.Tensor) -> list[float | None]:
    """A pyiqa no-reference metric image by image; None where it fails (e.g. a face too small for NIQE)."""
    scores: list[float | None] = []
    for image in images:
        try:
            value = float(metric(image[None]).reshape(-1)[0])
        except Exception as error:  # noqa: BLE001 - per-image failure is recorded, the run goes on
            log.debug("no-reference metric failed on one image: %s", error)
            value = None
        scores.append(value if value is not None and np.isfinite(value) else None)
    return scores


def fid_between(metric: Callable, restored_dir: Path, gt_dir: Path) -> float:
    """pyiqa FID between two folders of PNGs (in-process data loading: num_workers 0)."""
    return float(metric(str(restored_dir), str(gt_dir), num_workers=0, batch_size=FID_BATCH, verbose=False))
