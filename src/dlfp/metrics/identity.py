"""Identity metrics: dlib descriptor distance and angle, rank-1 identification, Wilson intervals, calibration.

- Identity: dlib's 128-D face descriptor (dlfp.models.dlib_resnet) on the aligned crops (frame "ffhq");
  euclidean distance, match when below 0.6, and the angle between descriptors in degrees.
- Rank-1 identification: a restored face is identified when its nearest GT descriptor is its own person's.
- Calibration: the false-accept rate of dlib's 0.6 threshold and the threshold at FAR_TARGET, measured on the
  test GT faces (impostor pairs), with intervals from a bootstrap over identities.

Used by the evaluate stage, the bias analysis and the prior's face measurement. May import torch, numpy, scipy,
dlfp.models.dlib_resnet and dlfp.metrics.iqa.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dlfp.metrics.iqa import to_unit_tensor
from dlfp.models.dlib_resnet import MATCH_THRESHOLD, load_dlib_resnet

CONFIDENCE = 0.95
FAR_TARGET = 1e-3  # the false-accept rate whose threshold is measured (the secondary, calibrated match rate)
CALIBRATION_RESAMPLES = 200  # bootstrap over identities for the calibration's intervals
CALIBRATION_SEED = 0
HISTOGRAM_BINS = 60
HISTOGRAM_RANGE = (0.0, 1.2)  # dlib descriptor distances: same person ~0.3-0.5, different people ~0.7-1.0


# ------------------------------------------------------------------------------- descriptor distances
def identity_distance(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """Euclidean distance between descriptors along the last axis (dlib's measure)."""
    if isinstance(a, Tensor):
        return torch.linalg.vector_norm(a - b, dim=-1)
    return np.linalg.norm(np.asarray(a) - np.asarray(b), axis=-1)


def cosine_angle_degrees(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """Angle between descriptors in degrees (the "Deg." identity column of GFP-GAN's tables)."""
    if isinstance(a, Tensor):
        cos = F.cosine_similarity(a, b, dim=-1).clamp(-1.0, 1.0)
        return torch.rad2deg(torch.arccos(cos))
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def match_rate(a: Tensor | np.ndarray, b: Tensor | np.ndarray, threshold: float = MATCH_THRESHOLD) -> float:
    """Fraction of pairs (a[i], b[i]) that dlib calls the same person (distance < threshold)."""
    distance = identity_distance(a, b)
    if isinstance(distance, Tensor):
        return float((distance < threshold).float().mean())
    return float(np.mean(distance < threshold))


# --------------------------------------------------------------------------------------------- identity
class IdentityScorer:
    """dlib's face descriptor (PyTorch port), batched, on FFHQ-aligned crops."""

    def __init__(self, device: torch.device | str = "cpu", batch_size: int = 32) -> None:
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
    recompute over the pairs of different identities, percentile interval). Not scipy.stats.bootstrap: it gives the
    same intervals (same seed, checked) but cannot drop a resample that holds a single person, so small galleries
    would get no interval at all.
    """
    from scipy.spatial.distance import pdist, squareform

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
