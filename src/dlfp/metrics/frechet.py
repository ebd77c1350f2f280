"""The Frechet distance between two sets of vectors (FD-dlib128 of the evaluate stage, the prior's face FD).

FD-dlib128 is the Frechet distance between the restored and GT sets in the 128-D descriptor space. It is not FID
(no Inception features) and its values are not comparable with FID. May import numpy and scipy.
"""

from __future__ import annotations

import warnings

import numpy as np

FD_EPS = 1e-6


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
