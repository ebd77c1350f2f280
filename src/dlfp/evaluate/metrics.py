"""Metric registry for the evaluate stage: pyiqa wrappers, identity, landmarks and the face-descriptor FD.

pyiqa metrics (PSNR, SSIM, LPIPS, NIQE, FID) run only when every weight file pyiqa would download is already in
$TORCH_HOME/hub/pyiqa or $TORCH_HOME/hub/checkpoints, checked by exact file name *before* pyiqa is asked to
build the metric; a missing file makes the metric "not computed: <file> missing ...", never a number. While a
pyiqa metric is built, downloads are refused outright, so nothing ever reaches for the network.

Conventions, recorded in the stage's summary:
- PSNR: pyiqa "psnr", RGB, data range 1, mse + 1e-8 in the denominator, so identical images give 80 dB (a cap,
  not infinity).
- SSIM: pyiqa "ssim", on the Y channel of YIQ (pyiqa's default: test_y_channel, color_space yiq), Y scaled to
  0..255 and rounded, Gaussian window 11 / sigma 1.5, no downsampling.
- Identity: dlib's 128-D face descriptor (dlfp.models.identity) on the aligned crops (frame "ffhq"); euclidean
  distance, match when below 0.6, and the angle between descriptors in degrees.
- Landmarks: dlib HOG detection + 68 points on the restored face resized to a fixed frame; the detection must
  overlap the GT landmarks' box; mean point error over the 68 points, normalised by the GT's outer-eye-corner
  distance (points 36 and 45, the 300-W "inter-ocular" distance). A face that is not found is a failure, counted.
- FD-dlib128: the Frechet distance between the restored and GT sets in the 128-D descriptor space. It is not
  FID (no Inception features) and its values are not comparable with FID.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import cv2
import numpy as np
import torch

log = logging.getLogger(__name__)

NOT_COMPUTED = "not computed"
PSNR_CAP_DB = 80.0  # pyiqa: 10 log10(1 / (0 + 1e-8)) for identical images
PYIQA_FOLDER = "pyiqa"  # under torch.hub.get_dir(): pyiqa's own weights
TORCHVISION_FOLDER = "checkpoints"  # under torch.hub.get_dir(): torchvision's backbone weights
PAIR_METRICS = ("psnr", "ssim", "lpips")  # full-reference, per image
NR_METRICS = ("niqe",)  # no-reference, per image
SET_METRICS = ("fid",)  # between folders
PYIQA_METRICS = PAIR_METRICS + NR_METRICS + SET_METRICS
FID_BATCH = 16
# Landmarks
OUTER_EYE_CORNERS = (36, 45)
DETECT_UPSAMPLE = 0  # at the default 256 px frame an FFHQ face is ~115 px wide, above HOG's 80 px window
MIN_BOX_IOU = 0.3  # a detection must overlap the GT face box this much to count as the face
LANDMARK_BOX_MARGIN = 0.1  # GT box = landmark extent grown by this fraction per side (dlib boxes include brows)
# Frechet distance
FD_EPS = 1e-6
# Rank-1 identification and the calibration of the match threshold
CONFIDENCE = 0.95
FAR_TARGET = 1e-3  # the false-accept rate whose threshold is measured (the secondary, calibrated match rate)
CALIBRATION_RESAMPLES = 200  # bootstrap over identities for the calibration's intervals
CALIBRATION_SEED = 0
HISTOGRAM_BINS = 60
HISTOGRAM_RANGE = (0.0, 1.2)  # dlib descriptor distances: same person ~0.3-0.5, different people ~0.7-1.0


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


# --------------------------------------------------------------------------------------------- identity
class IdentityScorer:
    """dlib's face descriptor (PyTorch port), batched, on FFHQ-aligned crops."""

    def __init__(self, device: torch.device | str = "cpu", batch_size: int = 32) -> None:
        from dlfp.models.identity import load_dlib_resnet

        self.device = torch.device(device)
        self.batch_size = batch_size
        self.net = load_dlib_resnet(self.device)

    @torch.inference_mode()
    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 RGB square crops (N, S, S, 3), any S -> float64 descriptors (N, 128)."""
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            by_size: dict[tuple, list[int]] = {}
            for position, image in enumerate(chunk):
                by_size.setdefault(image.shape, []).append(position)
            vectors = np.zeros((len(chunk), 128), np.float64)
            for positions in by_size.values():
                x = to_unit_tensor([chunk[p] for p in positions], self.device)
                vectors[positions] = self.net.embed(x, frame="ffhq", value_range=(0.0, 1.0)).double().cpu().numpy()
            out.append(vectors)
        return np.concatenate(out) if out else np.zeros((0, 128), np.float64)


def identity_scores(restored: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pair distance, match (distance < 0.6) and angle in degrees."""
    from dlfp.models.identity import MATCH_THRESHOLD, cosine_angle_degrees, identity_distance

    distance = np.asarray(identity_distance(restored, gt), np.float64)
    return {"identity_distance": distance, "identity_match": distance < MATCH_THRESHOLD,
            "identity_angle_deg": np.asarray(cosine_angle_degrees(restored, gt), np.float64)}


# ------------------------------------------------------------------------- rank-1 identification, calibration
def identity_label(sample_id: str, meta: Mapping) -> str:
    """One label per person: copies of one FFHQ image (the same face at several sizes) share their ffhq_id."""
    ffhq_id = meta.get("ffhq_id")
    return f"ffhq:{ffhq_id}" if ffhq_id not in (None, "") else f"sample:{sample_id}"


def rank1_correct(probes: np.ndarray, probe_labels: Sequence[str], gallery: np.ndarray,
                  gallery_labels: Sequence[str]) -> np.ndarray:
    """Per probe: is a gallery descriptor of its own identity strictly nearer than every other identity's?

    Copies of the probe's identity are never distractors (the nearest of them counts); a tie with another
    identity counts as wrong. A probe whose identity is missing from the gallery is wrong.
    """
    from scipy.spatial.distance import cdist

    if len(gallery) == 0:
        return np.zeros(len(probes), bool)
    distances = cdist(np.asarray(probes, np.float64), np.asarray(gallery, np.float64))
    same = np.asarray(probe_labels, object)[:, None] == np.asarray(gallery_labels, object)[None, :]
    own = np.where(same, distances, np.inf).min(axis=1)
    other = np.where(same, np.inf, distances).min(axis=1)
    return own < other


def wilson_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (scipy)."""
    from scipy.stats import binomtest

    interval = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def impostor_distances(gallery: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """Euclidean distances of every pair of gallery descriptors whose identities differ (each pair once)."""
    from scipy.spatial.distance import pdist

    gallery = np.asarray(gallery, np.float64)
    first, second = np.triu_indices(len(gallery), k=1)
    names = np.asarray(labels, object)
    return pdist(gallery)[names[first] != names[second]]


def false_accept_rate(impostors: np.ndarray, threshold: float) -> float:
    """Fraction of impostor pairs that a threshold accepts (distance < threshold)."""
    return float(np.mean(np.asarray(impostors) < threshold))


def threshold_at_far(impostors: np.ndarray, far: float) -> float:
    """The largest threshold whose empirical false-accept rate (distance < threshold) is at most `far`.

    With N impostor distances sorted, that is the (floor(far * N) + 1)-th smallest: below it lie floor(far * N)
    of them (fewer when there are ties).
    """
    ordered = np.sort(np.asarray(impostors, np.float64))
    if len(ordered) == 0:
        raise ValueError("no impostor pairs: the gallery needs at least two identities")
    return float(ordered[min(int(math.floor(far * len(ordered))), len(ordered) - 1)])


@dataclass
class Calibration:
    """The match threshold's false-accept rate, measured on this test set's GT faces in our face frame."""

    identities: int
    faces: int
    impostor_pairs: int
    far_at_default: float  # FAR of MATCH_THRESHOLD
    far_at_default_ci: tuple[float, float]
    threshold_at_far: float  # threshold at FAR_TARGET
    threshold_at_far_ci: tuple[float, float]
    histogram_counts: list[int]
    histogram_edges: list[float]

    @property
    def resolvable(self) -> bool:
        """FAR_TARGET is resolvable only with at least 1 / FAR_TARGET impostor pairs (one false accept)."""
        return self.impostor_pairs * FAR_TARGET >= 1.0


def calibrate(gallery: np.ndarray, labels: Sequence[str], resamples: int = CALIBRATION_RESAMPLES,
              seed: int = CALIBRATION_SEED) -> Calibration:
    """Impostor distribution of the gallery: FAR of 0.6, threshold at FAR_TARGET, both with 95% CIs.

    Impostor pairs share faces (every face is in hundreds of pairs), so a binomial interval over pairs would be
    far too narrow: the intervals come from a bootstrap over identities (resample identities with their faces,
    recompute over the pairs of different identities, percentile interval).
    """
    from scipy.spatial.distance import pdist, squareform

    from dlfp.models.identity import MATCH_THRESHOLD

    gallery = np.asarray(gallery, np.float64)
    names = np.asarray(labels, object)
    impostors = impostor_distances(gallery, labels)
    if len(impostors) == 0:
        raise ValueError("no impostor pairs: the gallery needs at least two identities")
    unique, codes = np.unique(names.astype(str), return_inverse=True)
    members = [np.flatnonzero(codes == code) for code in range(len(unique))]
    full = squareform(pdist(gallery))
    rng = np.random.default_rng(seed)
    fars, thresholds = [], []
    for _ in range(resamples):
        drawn = rng.integers(0, len(unique), len(unique))
        faces = np.concatenate([members[code] for code in drawn])
        first, second = np.triu_indices(len(faces), k=1)
        keep = codes[faces[first]] != codes[faces[second]]
        if not keep.any():
            continue
        sample = full[faces[first[keep]], faces[second[keep]]]
        fars.append(false_accept_rate(sample, MATCH_THRESHOLD))
        thresholds.append(threshold_at_far(sample, FAR_TARGET))

    def interval(values: list[float]) -> tuple[float, float]:
        if not values:
            return math.nan, math.nan
        low, high = np.percentile(values, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
        return float(low), float(high)

    # clipped into the range, so the counts add up to every impostor pair
    counts, edges = np.histogram(np.clip(impostors, *HISTOGRAM_RANGE), bins=HISTOGRAM_BINS, range=HISTOGRAM_RANGE)
    return Calibration(len(unique), len(gallery), len(impostors), false_accept_rate(impostors, MATCH_THRESHOLD),
                       interval(fars), threshold_at_far(impostors, FAR_TARGET), interval(thresholds),
                       counts.astype(int).tolist(), [round(float(e), 6) for e in edges])


# -------------------------------------------------------------------------------------------- landmarks
@dataclass(frozen=True)
class LandmarkResult:
    detected: bool
    nme: float | None = None  # mean point error / outer-eye-corner distance
    error_px: float | None = None  # mean point error in GT pixels


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    left, top = max(a[0], b[0]), max(a[1], b[1])
    right, bottom = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, right - left) * max(0.0, bottom - top)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def landmark_box(points: np.ndarray, margin: float = LANDMARK_BOX_MARGIN) -> list[float]:
    """[left, top, right, bottom] of the points, grown by `margin` of the extent on every side."""
    low, high = points.min(axis=0), points.max(axis=0)
    grow = (high - low) * margin
    return [float(low[0] - grow[0]), float(low[1] - grow[1]), float(high[0] + grow[0]), float(high[1] + grow[1])]


class LandmarkScorer:
    """68 points found on the restored face vs the GT's stored landmarks (both in GT pixels)."""

    def __init__(self, frame: int = 256, upsample: int = DETECT_UPSAMPLE) -> None:
        from dlfp.data.landmarks import FaceLandmarker

        self.frame = frame
        self.landmarker = FaceLandmarker("hog", upsample=upsample, cnn_fallback=False)

    def measure(self, image: np.ndarray, gt_points: np.ndarray) -> LandmarkResult:
        height, width = image.shape[:2]
        sx, sy = self.frame / width, self.frame / height
        interpolation = cv2.INTER_AREA if self.frame < max(width, height) else cv2.INTER_CUBIC
        framed = np.ascontiguousarray(cv2.resize(image, (self.frame, self.frame), interpolation=interpolation))
        # pixel-centre coordinates: x_frame = (x + 0.5) * s - 0.5
        gt_framed = (gt_points + 0.5) * np.array([sx, sy]) - 0.5
        target = landmark_box(gt_framed)
        candidates = [(box, _iou(target, [box.left, box.top, box.right + 1, box.bottom + 1]))
                      for box in self.landmarker.detect(framed)]
        candidates = [(box, iou) for box, iou in candidates if iou >= MIN_BOX_IOU]
        if not candidates:
            return LandmarkResult(False)
        box = max(candidates, key=lambda item: item[1])[0]
        found = self.landmarker.landmarks(framed, box)
        found = (found + 0.5) / np.array([sx, sy]) - 0.5
        return landmark_error(found, gt_points)


def landmark_error(found: np.ndarray, gt_points: np.ndarray) -> LandmarkResult:
    """Mean point error, in pixels and normalised by the GT's outer-eye-corner distance."""
    error = float(np.linalg.norm(found - gt_points, axis=1).mean())
    inter_ocular = float(np.linalg.norm(gt_points[OUTER_EYE_CORNERS[0]] - gt_points[OUTER_EYE_CORNERS[1]]))
    return LandmarkResult(True, error / inter_ocular if inter_ocular > 0 else None, error)


# --------------------------------------------------------------------------------------- Frechet distance
def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two sets of vectors (N, D), as FID does it.

    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrt(S_a S_b)); an ill-conditioned product (fewer samples than
    dimensions) gets FD_EPS on the diagonals, as in the reference FID code.
    """
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"the Frechet distance needs at least 2 vectors per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # singular covariances are expected with fewer faces than dimensions
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():
            offset = np.eye(len(cov_a)) * FD_EPS
            root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    root = np.real(root)
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(root))
    return max(value, 0.0)  # tiny negative values are rounding
