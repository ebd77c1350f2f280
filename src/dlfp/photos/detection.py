"""Own photos: finding the faces to restore. dlib detection (searched at a reduced size in large photos), the
68 landmarks, their plausibility check, the template's 5 points, and why each skipped face was skipped.

A library: imports the landmark code (dlfp.faces.landmarks) only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from dlfp.faces.landmarks import (
    CNN_FALLBACK_MAX_SIDE,
    Detector,
    FaceBox,
    FaceLandmarker,
    LandmarkError,
    check_landmarks,
    template_points,
)

HOG_UPSAMPLE = 1                  # HOG finds faces down to about 40 px at upsample 1 (80 px at 0)
HOG_DETECT_MAX_SIDE = 2048        # larger photos are searched at this longest side (time grows with pixels)
CNN_DETECT_MAX_SIDE = CNN_FALLBACK_MAX_SIDE


@dataclass
class FaceCounts:
    found: int = 0
    small: int = 0
    landmarks: int = 0
    off_centre: int = 0
    too_large: int = 0


def _scaled_for_detection(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    longest = max(rgb.shape[:2])
    if longest <= max_side:
        return rgb, 1.0
    factor = max_side / longest
    size = (max(round(rgb.shape[1] * factor), 1), max(round(rgb.shape[0] * factor), 1))
    return np.ascontiguousarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)), factor


def detect_faces(landmarker: FaceLandmarker, rgb: np.ndarray) -> list[FaceBox]:
    """Every detection in input pixels (largest first); large photos are searched at a reduced size."""
    max_side = HOG_DETECT_MAX_SIDE if landmarker.detector_kind == "hog" else CNN_DETECT_MAX_SIDE
    image, factor = _scaled_for_detection(rgb, max_side)
    boxes = landmarker.detect(image)
    if factor == 1.0:
        return boxes
    return [FaceBox(round(b.left / factor), round(b.top / factor), round(b.right / factor), round(b.bottom / factor),
                    b.score, b.detector) for b in boxes]


def _centre_distance(box: FaceBox, width: int, height: int) -> float:
    return math.hypot((box.left + box.right) / 2 - (width - 1) / 2, (box.top + box.bottom) / 2 - (height - 1) / 2)


def select_faces(landmarker: FaceLandmarker, rgb: np.ndarray, boxes: list[FaceBox], *, min_face_size: int,
                 only_center_face: bool) -> tuple[list[np.ndarray], FaceCounts]:
    """5-point arrays of the faces to restore, and why the others were skipped (each found face counted once)."""
    counts = FaceCounts(found=len(boxes))
    usable: list[tuple[FaceBox, np.ndarray]] = []
    for box in boxes:
        if box.side < min_face_size:
            counts.small += 1
            continue
        points = landmarker.landmarks(rgb, box)
        try:
            check_landmarks(points, box)
        except LandmarkError:
            counts.landmarks += 1
            continue
        usable.append((box, template_points(points)))
    if only_center_face and len(usable) > 1:
        height, width = rgb.shape[:2]
        usable.sort(key=lambda item: _centre_distance(item[0], width, height))
        counts.off_centre = len(usable) - 1
        usable = usable[:1]
    return [points for _, points in usable], counts


@lru_cache(maxsize=2)
def landmarker_for(detector: Detector) -> FaceLandmarker:
    """One detector + shape predictor per process and kind (loading the 68-point model takes seconds)."""
    return FaceLandmarker(detector, upsample=HOG_UPSAMPLE)
