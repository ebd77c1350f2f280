"""Does the prior draw faces? Two measurements on a fixed set of prior samples, each beside its real-face level.

- Face-detection rate: dlib's HOG frontal-face detector (the align stage's detector, dlfp.faces.landmarks) on the
  samples upscaled to EVAL_FRAME px (a 64 px face is below HOG's 80 px window), with a Wilson 95% interval. The
  reference is the same detector on real train faces downscaled to the prior's resolution and upscaled the same
  way. HOG measures a face-like layout (brow/eye/nose/mouth gradients), not realism.
- FD (Frechet distance) in dlib's 128-D descriptor space (the evaluate stage's IdentityScorer, FFHQ frame) between
  the samples and one half of the real faces; the reference floor is the FD between the two disjoint halves of the
  real faces. With fewer vectors than dimensions the covariances are singular and FD is biased upward: compare a
  curve with its floor at the same n, never with FD values from larger sets. FD gets no interval: one 128x128
  sqrtm costs about 1.5 s on a shared CPU core, so a bootstrap would cost minutes per checkpoint; n is logged.

Nothing here draws from the global torch / numpy RNGs (training resumes bit-identically): the latents come from
their own torch.Generator, the networks load without random init.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable, Sequence
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from dlfp.io.atomic import write_csv_atomic
from dlfp.io.hashing import derive_seed

EVAL_FRAME = 256  # px: an FFHQ-aligned face is ~115 px wide here, above HOG's 80 px window (as evaluate's landmarks)
MIN_REAL_FACES = 4  # two halves of two: the least that gives the FD floor a covariance
EVAL_NAMESPACE = "prior-eval"  # derive_seed namespace of the fixed latents
CONFIDENCE = 0.95
METRICS_CSV = "prior_metrics.csv"
REFERENCE_JSON = "prior_reference.json"
NOISE_OFF = "_noise_off"  # suffix of the same figures on the noise-free rendering (every noise input at zero)
MEASURED = ("detection_rate", "ci_low", "ci_high", "fd_dlib")
COLUMNS = ("step", *MEASURED, "n_samples", "n_real", *(f"{name}{NOISE_OFF}" for name in MEASURED))
CLAIM = ("HOG detection measures a frontal face-like layout, not realism or identity; FD in dlib's 128-D descriptor "
         "space with n samples (n < 128) is biased upward, so read it against the real-vs-real floor at similar n; "
         "it carries no interval. The noise-off figures render the same latents with every noise input at zero: "
         "they measure the layout the styles draw, not the samples the prior gives the restorer (which adds noise).")


def to_uint8(images: Tensor) -> np.ndarray:
    """(N, 3, S, S) in [-1, 1] -> uint8 (N, S, S, 3), rounded as the sample grids are."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def upscale(images: np.ndarray, frame: int = EVAL_FRAME) -> list[np.ndarray]:
    """uint8 (N, S, S, 3) -> N contiguous (frame, frame, 3) images: bicubic up, area down (as evaluate's
    LandmarkScorer frames its images)."""
    interpolation = cv2.INTER_AREA if images.shape[1] > frame else cv2.INTER_CUBIC
    return [np.ascontiguousarray(cv2.resize(image, (frame, frame), interpolation=interpolation)) for image in images]


def eval_latents(seed: int, count: int, dim: int) -> Tensor:
    """The fixed latents of the measurement, from their own generator (the training RNG is left alone)."""
    generator = torch.Generator().manual_seed(derive_seed(seed, EVAL_NAMESPACE, "latents") % 2**63)
    return torch.randn(count, dim, generator=generator)


def real_faces(stream: Iterable[tuple[int, int, dict]], count: int) -> np.ndarray:
    """The first `count` GT faces of a (flip-free) training stream, uint8 at the stream's out_size."""
    images = [sample["gt"][None] for _, _, sample in islice(stream, count)]
    if len(images) < MIN_REAL_FACES:
        raise ValueError(f"the prior's face measurement needs at least {MIN_REAL_FACES} train faces, "
                         f"got {len(images)}")
    return to_uint8(torch.cat(images))


class FaceMeasure:
    """HOG detection rate and descriptor FD of uint8 images at the prior's resolution, against real train faces."""

    def __init__(self, real: np.ndarray, frame: int = EVAL_FRAME) -> None:
        from dlfp.faces.landmarks import FaceLandmarker
        from dlfp.metrics.frechet import frechet_distance
        from dlfp.metrics.identity import IdentityScorer
        from dlfp.metrics.landmarks import DETECT_UPSAMPLE

        started = time.monotonic()
        self.frame = frame
        self.detector = FaceLandmarker("hog", upsample=DETECT_UPSAMPLE, cnn_fallback=False)
        self.scorer = IdentityScorer("cpu")
        framed = upscale(real, frame)
        found = self.detected(framed)
        descriptors = self.scorer.embed(framed)
        self.real_a, real_b = descriptors[0::2], descriptors[1::2]  # disjoint halves
        low, high = self._wilson(found, len(real))
        fd = frechet_distance(self.real_a, real_b)
        self.reference = {"detection_rate": found / len(real), "ci_low": low, "ci_high": high,
                          "detected": found, "n_real": len(real), "fd_dlib": fd,
                          "fd_n": [len(self.real_a), len(real_b)], "frame": frame,
                          "seconds": round(time.monotonic() - started, 2)}

    @staticmethod
    def _wilson(successes: int, trials: int) -> tuple[float, float]:
        from dlfp.metrics.identity import wilson_interval

        return wilson_interval(successes, trials, CONFIDENCE)

    def detected(self, framed: Sequence[np.ndarray]) -> int:
        """How many images have at least one HOG face."""
        return sum(1 for image in framed if self.detector.detect(image))

    def figures(self, images: np.ndarray) -> dict[str, float]:
        """Detection rate with its Wilson interval and descriptor FD of uint8 samples (N, S, S, 3)."""
        from dlfp.metrics.frechet import frechet_distance

        framed = upscale(images, self.frame)
        found = self.detected(framed)
        low, high = self._wilson(found, len(images))
        fd = frechet_distance(self.scorer.embed(framed), self.real_a)
        return {"detection_rate": found / len(images), "ci_low": low, "ci_high": high, "fd_dlib": fd}

    def measure(self, step: int, images: np.ndarray, noise_off: np.ndarray | None = None) -> dict:
        """One prior_metrics.csv row for uint8 samples (N, S, S, 3), and for the same latents rendered without noise
        (empty cells when not given)."""
        row = {"step": step, **self.figures(images), "n_samples": len(images), "n_real": len(self.real_a)}
        off = self.figures(noise_off) if noise_off is not None else dict.fromkeys(MEASURED, "")
        return {**row, **{f"{name}{NOISE_OFF}": off[name] for name in MEASURED}}


def _cell(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class MetricsLog:
    """prior_metrics.csv, rewritten atomically on every row; a resume keeps the rows up to its checkpoint step."""

    def __init__(self, path: Path, start_step: int) -> None:
        self.path = path
        self.rows: list[list[str]] = []
        if start_step > 0 and path.exists():
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.reader(handle)
                header = next(reader, None) or []
                if header == list(COLUMNS[:len(header)]):  # this layout, or an older run's without noise-off cells
                    pad = [""] * (len(COLUMNS) - len(header))
                    self.rows = [row + pad for row in reader if row and int(row[0]) <= start_step]

    def write(self, row: dict) -> None:
        self.rows = [r for r in self.rows if int(r[0]) != row["step"]]
        self.rows.append([_cell(row[name]) for name in COLUMNS])
        write_csv_atomic(self.path, COLUMNS, self.rows)
