"""Where the skin is: the cheek-and-forehead skin mask and the eye mask, from 68 landmarks.

The mask holds the skin least covered by hair, beard and features; every margin scales with the inter-ocular
distance. Landmark indices follow the 68-point iBUG scheme (0-based), as dlib returns them. Used by
dlfp.bias.skin (tone) and dlfp.bias.faces; imports nothing from dlfp.
"""

from __future__ import annotations

import cv2
import numpy as np

# ----------------------------------------------------------------------------------- landmark indices
JAW_LEFT = [1, 2, 3, 4, 5]            # image-left cheek edge (subject's right)
JAW_RIGHT = [15, 14, 13, 12, 11]      # image-right cheek edge
BROW_LEFT = list(range(17, 22))
BROW_RIGHT = list(range(22, 27))
BROWS = list(range(17, 27))
NOSE_BRIDGE_TOP = 27
NOSTRILS = list(range(31, 36))        # 31 (image-left wing) .. 35 (image-right wing)
EYE_LEFT = list(range(36, 42))        # 36 outer corner, 39 inner corner, 40-41 lower eyelid
EYE_RIGHT = list(range(42, 48))       # 42 inner corner, 45 outer corner, 46-47 lower eyelid
MOUTH_OUTER = list(range(48, 60))
MOUTH_LEFT_CORNER, MOUTH_RIGHT_CORNER = 48, 54
# Cheek polygons: jaw edge, mouth corner, nostril wing, then back along the lower eyelid to the outer corner.
CHEEK_LEFT = [*JAW_LEFT, MOUTH_LEFT_CORNER, 31, 39, 40, 41, 36]
CHEEK_RIGHT = [*JAW_RIGHT, MOUTH_RIGHT_CORNER, 35, 42, 47, 46, 45]
NOSE = [NOSE_BRIDGE_TOP, *NOSTRILS]

# ------------------------------------------------------------------- mask geometry (x inter-ocular distance)
FOREHEAD_LOW = 0.15         # forehead band starts this far above the brows ...
FOREHEAD_HIGH = 0.50        # ... and ends this far above them (higher up, hair and the hairline take over)
EYELID_MARGIN = 0.12        # keep this far below the lower eyelids (lashes, eye bags)
FEATURE_MARGIN = 0.08       # eyes, brows, nose and lips are excluded with this margin around them
EROSION = 0.06              # erosion kernel diameter: keeps landmark jitter and feature edges out


# ------------------------------------------------------------------------------------------- mask
def inter_ocular(landmarks68: np.ndarray) -> float:
    """Distance between the eye centres: the face-size unit every mask margin is scaled with."""
    left = landmarks68[EYE_LEFT].mean(axis=0)
    right = landmarks68[EYE_RIGHT].mean(axis=0)
    return float(np.hypot(*(right - left)))


def _up_vector(landmarks68: np.ndarray) -> np.ndarray:
    """Unit vector from the mouth towards the brows, perpendicular to the eye line (handles head roll)."""
    eye_line = landmarks68[EYE_RIGHT].mean(axis=0) - landmarks68[EYE_LEFT].mean(axis=0)
    up = np.array([eye_line[1], -eye_line[0]])
    return up / max(float(np.hypot(*up)), 1e-9)


def _fill(mask: np.ndarray, points: np.ndarray, value: int = 1) -> None:
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], value)


def _feature_exclusion(landmarks68: np.ndarray, shape: tuple[int, int], iod: float) -> np.ndarray:
    """Eyes, brows, nose and lips, dilated by FEATURE_MARGIN: pixels that are never skin samples."""
    excluded = np.zeros(shape, np.uint8)
    for polygon in (EYE_LEFT, EYE_RIGHT, MOUTH_OUTER, NOSE):
        _fill(excluded, landmarks68[polygon])
    for brow in (BROW_LEFT, BROW_RIGHT):
        thickness = max(1, round(2 * FEATURE_MARGIN * iod))
        cv2.polylines(excluded, [np.round(landmarks68[brow]).astype(np.int32)], False, 1, thickness)
    size = max(1, 2 * round(FEATURE_MARGIN * iod) + 1)
    return cv2.dilate(excluded, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))) > 0


def skin_mask(landmarks68: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of cheek and forehead skin: the skin least covered by hair, beard and features."""
    landmarks68 = np.asarray(landmarks68, dtype=np.float64)
    if landmarks68.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {landmarks68.shape}")
    height, width = int(shape[0]), int(shape[1])
    iod = inter_ocular(landmarks68)
    up = _up_vector(landmarks68)
    region = np.zeros((height, width), np.uint8)
    for cheek, lid in ((CHEEK_LEFT, EYE_LEFT), (CHEEK_RIGHT, EYE_RIGHT)):
        points = landmarks68[cheek].copy()
        lid_rows = [cheek.index(i) for i in lid if i in cheek]
        points[lid_rows] -= up * EYELID_MARGIN * iod          # move the eyelid edge down
        _fill(region, points)
    brows = landmarks68[BROWS]
    forehead = np.concatenate([brows + up * FOREHEAD_LOW * iod, (brows + up * FOREHEAD_HIGH * iod)[::-1]])
    _fill(region, forehead)
    region[_feature_exclusion(landmarks68, (height, width), iod)] = 0
    size = max(1, 2 * round(EROSION * iod / 2) + 1)
    region = cv2.erode(region, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    return region > 0


def eye_mask(landmarks68: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels inside the two eye polygons (36-41, 42-47): where the sclera reference is searched."""
    mask = np.zeros(shape[:2], np.uint8)
    for eye in (EYE_LEFT, EYE_RIGHT):
        _fill(mask, np.asarray(landmarks68, dtype=np.float64)[eye])
    return mask > 0
