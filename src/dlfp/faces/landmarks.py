"""Face detection and 68-point landmarks with dlib, and the geometry derived from them.

Shared by the align stage and by `dlfp restore` on own photos: detection, the 5 template points of
gfpgan-spec section 5 (taken from the 68 points, section 5b), FFHQ's oriented crop quad and the facial
component boxes of section 3.

Coordinates are pixel-centre based throughout: (0, 0) is the centre of the top-left pixel, as dlib returns
them. Landmark indices follow the 68-point iBUG scheme. Names follow the GFP-GAN reference: "left_eye" is
points 36-41, the subject's right eye, which appears on the image LEFT (smaller x) in a frontal photo.

Imports numpy, OpenCV, dlib and dlfp.models.dlib_files only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import dlib
import numpy as np

from dlfp.models.dlib_files import CNN_FACE_DETECTOR, LANDMARKS_68, dlib_model_path

# ----------------------------------------------------------------------------------- named constants
NUM_LANDMARKS = 68
LEFT_EYE_POINTS = slice(36, 42)     # image-left eye (subject's right)
RIGHT_EYE_POINTS = slice(42, 48)    # image-right eye (subject's left)
MOUTH_POINTS = slice(48, 68)
NOSE_TIP = 30
MOUTH_LEFT_CORNER, MOUTH_RIGHT_CORNER = 48, 54

# gfpgan-spec section 5: the 5-point template at 512 px (left eye, right eye, nose tip, mouth corners).
TEMPLATE_SIZE = 512
TEMPLATE_5_POINTS_512 = np.array([
    (192.98138, 239.94708),
    (318.90277, 240.1936),
    (256.63416, 314.01935),
    (201.26117, 371.41043),
    (313.08905, 371.15118),
], dtype=np.float64)

# FFHQ crop quad (NVlabs recreate_aligned_images; gfpgan-spec section 5b).
QUAD_EYE_SCALE = 2.0        # |x| >= |eye_to_eye| * 2.0
QUAD_MOUTH_SCALE = 1.8      # |x| >= |eye_to_mouth| * 1.8
QUAD_CENTRE_SHIFT = 0.1     # centre = eye_avg + eye_to_mouth * 0.1

# Component boxes (gfpgan-spec section 3): minimum half size 16 px at 512, eyes enlarged x1.4.
COMPONENT_MIN_HALF_512 = 16.0
EYE_ENLARGE = 1.4
COMPONENTS = ("left_eye", "right_eye", "mouth")

# Plausibility of a 68-point fit: dlib always returns 68 points, even on a false or profile detection.
MIN_FEATURE_SPAN = 0.15     # eye-to-eye and eye-to-mouth distances, as a fraction of the face box side
MIN_UPRIGHTNESS = 0.5       # cosine between eye_to_mouth and the perpendicular of eye_to_eye (60 deg)

Detector = Literal["hog", "cnn"]


class LandmarkError(ValueError):
    """The 68 points do not describe a plausible face (swapped, collapsed or non-finite)."""


# ------------------------------------------------------------------------------------------ detection
# The CNN fallback searches large photos at this longest side at most (time and memory grow with pixels).
CNN_FALLBACK_MAX_SIDE = 1024
@dataclass(frozen=True)
class FaceBox:
    """A detected face in input pixels: [left, top, right, bottom] as dlib gives it (inclusive)."""

    left: int
    top: int
    right: int
    bottom: int
    score: float = 0.0
    detector: str = "hog"

    @property
    def side(self) -> int:
        """The smaller side of the box: what the minimum face size is compared with."""
        return min(self.right - self.left + 1, self.bottom - self.top + 1)

    def as_list(self) -> list[int]:
        return [self.left, self.top, self.right, self.bottom]

    def to_dlib(self) -> dlib.rectangle:
        return dlib.rectangle(self.left, self.top, self.right, self.bottom)


def _largest_first(boxes: list[FaceBox]) -> list[FaceBox]:
    return sorted(boxes, key=lambda b: (-b.side, b.left, b.top))


class FaceLandmarker:
    """dlib face detector + 68-point shape predictor, loaded once (model loading takes about a second)."""

    def __init__(self, detector: Detector = "hog", upsample: int = 1, cnn_fallback: bool = False) -> None:
        if detector not in ("hog", "cnn"):
            raise ValueError(f"unknown face detector {detector!r}; use 'hog' or 'cnn'")
        self.detector_kind = detector
        self.upsample = upsample
        self.cnn_fallback = cnn_fallback
        self._hog = dlib.get_frontal_face_detector() if detector == "hog" else None
        self._cnn = self._load_cnn() if detector == "cnn" else None
        self._predictor = dlib.shape_predictor(str(dlib_model_path(LANDMARKS_68)))

    @staticmethod
    def _load_cnn() -> dlib.cnn_face_detection_model_v1:
        return dlib.cnn_face_detection_model_v1(str(dlib_model_path(CNN_FACE_DETECTOR)))

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        """All faces in an 8-bit RGB image (H, W, 3), largest first.

        With `cnn_fallback`, an image where HOG finds nothing is searched again with dlib's CNN detector
        (about 1 s per 256 px image on a CPU core), which finds the tilted or occluded faces HOG misses.
        """
        image = np.ascontiguousarray(image)
        if self._hog is not None:
            rects, scores, _ = self._hog.run(image, self.upsample, 0.0)
            boxes = [FaceBox(r.left(), r.top(), r.right(), r.bottom(), float(s), "hog")
                     for r, s in zip(rects, scores, strict=True)]
            if boxes or not self.cnn_fallback:
                return _largest_first(boxes)
            return _largest_first(self._detect_cnn(image, upsample=0, limit_side=CNN_FALLBACK_MAX_SIDE))
        return _largest_first(self._detect_cnn(image, upsample=self.upsample, limit_side=None))

    def _detect_cnn(self, image: np.ndarray, upsample: int, limit_side: int | None) -> list[FaceBox]:
        """CNN (mmod) detection; with `limit_side`, a large image is searched at a reduced size first."""
        if self._cnn is None:
            self._cnn = self._load_cnn()
        scale = 1.0
        if limit_side is not None and max(image.shape[:2]) > limit_side:
            scale = limit_side / max(image.shape[:2])
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            image = np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
        found = self._cnn(image, upsample)
        return [FaceBox(round(d.rect.left() / scale), round(d.rect.top() / scale), round(d.rect.right() / scale),
                        round(d.rect.bottom() / scale), float(d.confidence), "cnn") for d in found]

    def landmarks(self, image: np.ndarray, box: FaceBox) -> np.ndarray:
        """The 68 points (float64 array (68, 2), input pixels) inside a detected face box."""
        shape = self._predictor(np.ascontiguousarray(image), box.to_dlib())
        if shape.num_parts != NUM_LANDMARKS:
            raise LandmarkError(f"shape predictor gave {shape.num_parts} points, expected {NUM_LANDMARKS}")
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)

    def faces(self, image: np.ndarray, min_face_size: int = 0) -> list[tuple[FaceBox, np.ndarray]]:
        """Every face of at least min_face_size px with plausible landmarks (for restoring whole photos)."""
        found = []
        for box in self.detect(image):
            if box.side < min_face_size:
                continue
            points = self.landmarks(image, box)
            try:
                check_landmarks(points, box)
            except LandmarkError:
                continue
            found.append((box, points))
        return found


# ----------------------------------------------------------------------------------------- geometry
def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(left_eye, right_eye) centres: means of points 36-41 and 42-47."""
    return landmarks[LEFT_EYE_POINTS].mean(axis=0), landmarks[RIGHT_EYE_POINTS].mean(axis=0)


def mouth_centre(landmarks: np.ndarray) -> np.ndarray:
    """Mean of the two mouth corners (points 48 and 54), as FFHQ uses it."""
    return (landmarks[MOUTH_LEFT_CORNER] + landmarks[MOUTH_RIGHT_CORNER]) * 0.5


def template_points(landmarks: np.ndarray) -> np.ndarray:
    """The 5 points of the restoration template (gfpgan-spec 5) from 68: dlib's 5-point model gives others."""
    left, right = eye_centres(landmarks)
    return np.stack([left, right, landmarks[NOSE_TIP], landmarks[MOUTH_LEFT_CORNER],
                     landmarks[MOUTH_RIGHT_CORNER]])


def template_5_points(size: int) -> np.ndarray:
    """The template at `size` px (scaled from 512)."""
    return TEMPLATE_5_POINTS_512 * (size / TEMPLATE_SIZE)


def _rot90(v: np.ndarray) -> np.ndarray:
    """(a, b) -> (-b, a): a quarter turn, clockwise on screen (y points down)."""
    return np.array([-v[1], v[0]])


@dataclass(frozen=True)
class Quad:
    """FFHQ's oriented crop square: corners top-left, bottom-left, bottom-right, top-right (input pixels)."""

    corners: np.ndarray   # (4, 2)
    centre: np.ndarray    # (2,)
    x: np.ndarray         # half-side vector pointing to the face's right edge of the crop (image right)
    y: np.ndarray         # half-side vector pointing down the face

    @property
    def size(self) -> float:
        return float(np.hypot(*self.x) * 2.0)

    @property
    def angle(self) -> float:
        """Rotation of the crop in radians (0: upright)."""
        return float(np.arctan2(self.x[1], self.x[0]))


def ffhq_quad(landmarks: np.ndarray) -> Quad:
    """The oriented crop of NVlabs' recreate_aligned_images, computed from the 68 points."""
    eye_left, eye_right = eye_centres(landmarks)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = mouth_centre(landmarks) - eye_avg
    x = eye_to_eye - _rot90(eye_to_mouth)
    x = x / np.hypot(*x)
    x = x * max(np.hypot(*eye_to_eye) * QUAD_EYE_SCALE, np.hypot(*eye_to_mouth) * QUAD_MOUTH_SCALE)
    y = _rot90(x)
    c = eye_avg + eye_to_mouth * QUAD_CENTRE_SHIFT
    corners = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return Quad(corners=corners, centre=c, x=x, y=y)


def check_landmarks(landmarks: np.ndarray, box: FaceBox) -> None:
    """Raise LandmarkError unless the points look like an upright-enough face inside its box."""
    if landmarks.shape != (NUM_LANDMARKS, 2) or not np.all(np.isfinite(landmarks)):
        raise LandmarkError(f"expected 68 finite points, got shape {landmarks.shape}")
    eye_left, eye_right = eye_centres(landmarks)
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = mouth_centre(landmarks) - (eye_left + eye_right) * 0.5
    span = max(box.side, 1)
    e2e, e2m = float(np.hypot(*eye_to_eye)), float(np.hypot(*eye_to_mouth))
    if min(e2e, e2m) < MIN_FEATURE_SPAN * span:
        raise LandmarkError(f"collapsed landmarks: eye distance {e2e:.1f} px, eye-mouth {e2m:.1f} px "
                            f"for a {span} px face box")
    upright = float(np.dot(eye_to_mouth, _rot90(eye_to_eye)) / (e2e * e2m))
    if upright < MIN_UPRIGHTNESS:
        raise LandmarkError(f"implausible landmarks: mouth not below the eyes (cosine {upright:.2f})")


def component_boxes(landmarks: np.ndarray, size: int) -> dict[str, list[float]]:
    """Eye and mouth boxes [cx, cy, half] in the landmarks' pixels (gfpgan-spec section 3).

    half = max(half the larger extent of the points, 16 px at 512 scaled to `size`); the eye halves are then
    enlarged x1.4, so the stored boxes are final: consumers must not enlarge them again.
    """
    min_half = COMPONENT_MIN_HALF_512 * size / TEMPLATE_SIZE
    boxes = {}
    for name, points, enlarge in (("left_eye", LEFT_EYE_POINTS, EYE_ENLARGE),
                                  ("right_eye", RIGHT_EYE_POINTS, EYE_ENLARGE),
                                  ("mouth", MOUTH_POINTS, 1.0)):
        part = landmarks[points]
        centre = part.mean(axis=0)
        half = max(float((part.max(axis=0) - part.min(axis=0)).max()) * 0.5, min_half) * enlarge
        boxes[name] = [float(centre[0]), float(centre[1]), half]
    return boxes


def mirror_component_boxes(boxes: dict[str, list[float]], width: int) -> dict[str, list[float]]:
    """Boxes of the horizontally flipped image: x mirrored and the eyes swapped (a new dict, never in place,
    so cached boxes survive a flip; gfpgan-spec section 3)."""
    def mirror(box: list[float]) -> list[float]:
        return [width - 1 - box[0], box[1], box[2]]

    return {"left_eye": mirror(boxes["right_eye"]), "right_eye": mirror(boxes["left_eye"]),
            "mouth": mirror(boxes["mouth"])}
