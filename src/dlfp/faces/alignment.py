"""FFHQ alignment of one face: the crop quad's frame test, the affine maps, and the crop itself.

Used by the align stage (dlfp.stages.align). The decisions:
- Faces are counted only when their detection box side is >= min_face_size (input px). Smaller faces
  (background crowds) are ignored; an image whose faces are all smaller is rejected as "face too small",
  one with several large faces as "several faces".
- An image is already aligned when it is square and every corner of the FFHQ quad computed from its own
  landmarks lies within `tolerance` * side of the matching image corner (this bounds centre offset, size error
  and rotation at once). Such images are only resized (Lanczos); never decided by name.
- Other images get NVlabs' FFHQ alignment (shrink, crop with border, reflect-pad with a blurred border, quad
  to square rendered at 4x and box-downsampled). Landmarks are not re-detected on the output: the original
  points are mapped through the same (exact) similarity transform, which is cheaper and has no detector noise.
- All coordinates are pixel-centre based ((0, 0) = centre of the top-left pixel), in output pixels, except
  face_box which is the detection box in input pixels.

(Named faces/alignment.py, not faces/geometry.py: the restore photos' template warp and paste-back live there.)
Imports numpy, OpenCV, Pillow and dlfp.faces.landmarks only.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from dlfp.faces.landmarks import (
    FaceBox,
    FaceLandmarker,
    LandmarkError,
    Quad,
    check_landmarks,
    component_boxes,
    ffhq_quad,
)

ALIGNMENT_PASSTHROUGH = "passthrough"
ALIGNMENT_FFHQ = "ffhq"

# Rejection reasons (the rejects.csv "reason" column and the receipt's counts).
REJECT_UNREADABLE = "unreadable image"
REJECT_NO_FACE = "no face"
REJECT_SEVERAL_FACES = "several faces"
REJECT_TOO_SMALL = "face too small"
REJECT_LANDMARKS = "landmark failure"

# FFHQ alignment constants (NVlabs recreate_aligned_images).
SUPERSAMPLE = 4                 # the quad is rendered at 4x the output size, then downsampled
SHRINK_RATIO = 0.5              # shrink = floor(quad_size / output * 0.5) when the quad is much larger
CROP_BORDER_FRACTION = 0.1      # border kept around the quad when cropping
MIN_CROP_BORDER = 3
PAD_SLACK = 4                   # pad only when the quad leaves the image by more than border - 4 px
PAD_FRACTION = 0.3              # reflect padding of at least 0.3 * quad size
PAD_BLUR_FRACTION = 0.02        # Gaussian sigma of the padded-border blur, fraction of quad size


# -------------------------------------------------------------------------------------- geometry
def quad_frame_error(quad: Quad, width: int, height: int) -> float:
    """Largest distance between a quad corner and the matching image corner, as a fraction of the width."""
    frame = np.array([[0, 0], [0, height], [width, height], [width, 0]], dtype=np.float64) - 0.5
    return float(np.hypot(*(quad.corners - frame).T).max() / width)


def is_aligned(quad: Quad, width: int, height: int, tolerance: float) -> bool:
    """Already FFHQ-aligned: a square image whose own FFHQ quad is (nearly) the image frame."""
    return width == height and quad_frame_error(quad, width, height) <= tolerance


def scale_points(points: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
    """Map pixel-centre coordinates through a resize by (scale_x, scale_y)."""
    return (points + 0.5) * np.array([scale_x, scale_y]) - 0.5


def apply_affine(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (N, 2) points."""
    return points @ affine[:, :2].T + affine[:, 2]


def quad_sampling_affine(corners: np.ndarray, size: int) -> np.ndarray:
    """2x3 affine taking output pixel centres of a size x size square to source pixel centres in the quad.

    The square's continuous extent [0, size]^2 maps onto the quad with corners tl, bl, br, tr (pixel-centre
    coordinates, continuous = centre + 0.5), as PIL's QUAD transform with (quad + 0.5) does in FFHQ's code.
    """
    top_left, bottom_left, _, top_right = corners
    ex, ey = (top_right - top_left) / size, (bottom_left - top_left) / size
    offset = top_left + (ex + ey) * 0.5
    return np.array([[ex[0], ey[0], offset[0]], [ex[1], ey[1], offset[1]]], dtype=np.float64)


def input_to_output_affine(quad: Quad, size: int) -> np.ndarray:
    """2x3 affine mapping input pixel centres to aligned-output pixel centres (inverse of the sampling)."""
    return cv2.invertAffineTransform(quad_sampling_affine(quad.corners, size))


# ------------------------------------------------------------------------------------- image steps
def resize_aligned(image: np.ndarray, size: int) -> np.ndarray:
    """High-quality resize of an already-aligned face (Lanczos, antialiased when shrinking)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))


def _pad_with_blurred_border(image: np.ndarray, pad: tuple[int, int, int, int], blur: float) -> np.ndarray:
    """Reflect-pad (left, top, right, bottom), blur the padding and fade it to the median colour (FFHQ)."""
    left, top, right, bottom = pad
    padded = np.pad(image.astype(np.float32), ((top, bottom), (left, right), (0, 0)), mode="reflect")
    height, width = padded.shape[:2]
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    mask = np.maximum(1.0 - np.minimum(xx / left, (width - 1 - xx) / right),
                      1.0 - np.minimum(yy / top, (height - 1 - yy) / bottom))[:, :, None]
    blurred = cv2.GaussianBlur(padded, (0, 0), sigmaX=blur, sigmaY=blur, borderType=cv2.BORDER_REFLECT)
    padded += (blurred - padded) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    padded += (np.median(padded, axis=(0, 1)) - padded) * np.clip(mask, 0.0, 1.0)
    return np.clip(np.rint(padded), 0, 255).astype(np.uint8)


def ffhq_align(image: np.ndarray, quad: Quad, size: int) -> np.ndarray:
    """Crop the quad out of an RGB image into a size x size square, the way FFHQ was made."""
    corners = quad.corners.copy()
    quad_size = quad.size
    height, width = image.shape[:2]

    shrink = int(np.floor(quad_size / size * SHRINK_RATIO))
    if shrink > 1:   # a much larger face: shrink first so the 4x render never aliases
        new_w, new_h = int(np.rint(width / shrink)), int(np.rint(height / shrink))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        corners = scale_points(corners, new_w / width, new_h / height)
        quad_size /= shrink
        height, width = new_h, new_w

    border = max(int(np.rint(quad_size * CROP_BORDER_FRACTION)), MIN_CROP_BORDER)
    low = np.floor(corners.min(axis=0)).astype(int) - border
    high = np.ceil(corners.max(axis=0)).astype(int) + border
    x0, y0 = max(low[0], 0), max(low[1], 0)
    x1, y1 = min(high[0], width), min(high[1], height)
    image = image[y0:y1, x0:x1]
    corners = corners - np.array([x0, y0])
    height, width = image.shape[:2]

    low = np.floor(corners.min(axis=0)).astype(int)
    high = np.ceil(corners.max(axis=0)).astype(int)
    pad = (max(-low[0] + border, 0), max(-low[1] + border, 0),
           max(high[0] - width + border, 0), max(high[1] - height + border, 0))
    if max(pad) > border - PAD_SLACK:
        minimum = max(int(np.rint(quad_size * PAD_FRACTION)), 1)
        pad = tuple(max(p, minimum) for p in pad)
        image = _pad_with_blurred_border(image, pad, blur=quad_size * PAD_BLUR_FRACTION)
        corners = corners + np.array([pad[0], pad[1]])

    render = size * SUPERSAMPLE
    big = cv2.warpAffine(image, quad_sampling_affine(corners, render), (render, render),
                         flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT_101)
    return cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)


# ----------------------------------------------------------------------------------- one image
@dataclass(frozen=True)
class AlignedFace:
    """A kept face: the output pixels and the geometry stored in meta.jsonl."""

    image: np.ndarray
    alignment: str
    landmarks: np.ndarray                  # (68, 2) output pixels
    boxes: dict[str, list[float]]
    face_box: FaceBox                      # input pixels


class FaceRejected(ValueError):
    """The image yields no usable single face; `reason` is one of the REJECT_* constants."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def select_face(boxes: list[FaceBox], min_face_size: int) -> FaceBox:
    """The single face of at least min_face_size px, or FaceRejected (smaller faces are ignored)."""
    if not boxes:
        raise FaceRejected(REJECT_NO_FACE)
    large = [box for box in boxes if box.side >= min_face_size]
    if not large:
        raise FaceRejected(REJECT_TOO_SMALL, f"largest face {boxes[0].side} px < {min_face_size} px")
    if len(large) > 1:
        raise FaceRejected(REJECT_SEVERAL_FACES, f"{len(large)} faces of at least {min_face_size} px")
    return large[0]


def align_image(image: np.ndarray, landmarker: FaceLandmarker, *, size: int, min_face_size: int,
                tolerance: float) -> AlignedFace:
    """Detect the one face of an RGB image and return it aligned at `size`, or raise FaceRejected."""
    face = select_face(landmarker.detect(image), min_face_size)
    try:
        points = landmarker.landmarks(image, face)
        check_landmarks(points, face)
    except LandmarkError as error:
        raise FaceRejected(REJECT_LANDMARKS, str(error)) from None
    quad = ffhq_quad(points)
    height, width = image.shape[:2]
    if is_aligned(quad, width, height, tolerance):
        out = resize_aligned(image, size)
        points = scale_points(points, size / width, size / height)
        alignment = ALIGNMENT_PASSTHROUGH
    else:
        out = ffhq_align(image, quad, size)
        points = apply_affine(points, input_to_output_affine(quad, size))
        alignment = ALIGNMENT_FFHQ
    return AlignedFace(out, alignment, points, component_boxes(points, size), face)
