"""Landmark metric: 68 points found on the restored face against the GT's stored landmarks.

dlib HOG detection + 68 points on the restored face resized to a fixed frame; the detection must overlap the GT
landmarks' box; mean point error over the 68 points, normalised by the GT's outer-eye-corner distance (points 36
and 45, the 300-W "inter-ocular" distance). A face that is not found is a failure, counted. May import cv2,
numpy and dlfp.faces.landmarks (the face landmarker).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

OUTER_EYE_CORNERS = (36, 45)
DETECT_UPSAMPLE = 0  # at the default 256 px frame an FFHQ face is ~115 px wide, above HOG's 80 px window
MIN_BOX_IOU = 0.3  # a detection must overlap the GT face box this much to count as the face
LANDMARK_BOX_MARGIN = 0.1  # GT box = landmark extent grown by this fraction per side (dlib boxes include brows)


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
        from dlfp.faces.landmarks import FaceLandmarker

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
