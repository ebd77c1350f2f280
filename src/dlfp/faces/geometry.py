"""Face geometry for restoring faces in place: the similarity onto the 5-point template, the aligned crop
(warp), and the inverse warp that pastes a restored face back with a feathered mask.

The reference is GFP-GAN's FaceRestoreHelper (align_warp_face, paste_faces_to_input_image), made pixel-centre
exact: coordinates are pixel-centre based ((0, 0) is the centre of the top-left pixel), as dlib's landmarks.
The template itself (its 5 points at 512 px) is defined beside the landmarks (dlfp.faces.landmarks, which the
align stage shares); the align stage's own FFHQ quad warp is separate (issue 15 wave 2 may merge the two).

A library: imports numpy, OpenCV and the template points only; never photos/, a stage, train/ or report/.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from dlfp.faces.landmarks import LandmarkError, template_5_points
from dlfp.io.images import MAX_8BIT

# Warping and blending (the reference's FaceRestoreHelper.paste_faces_to_input_image, pixel-centre exact).
ANTIALIAS_BELOW_SCALE = 0.5       # a warp shrinking more than 2x first area-downsamples its source
ROI_MARGIN = 2                    # px around a face's footprint (linear interpolation reads 1 px beyond)
EDGE_FRACTION = 1 / 20            # feather width = sqrt(face area in output px) / 20, as the reference
EROSION_EDGES = 2                 # the mask is eroded by 2 feather widths, then blurred over 2 widths


def similarity_to_template(points5: np.ndarray, out_size: int) -> np.ndarray:
    """2x3 similarity mapping the photo's 5 points onto the template at out_size (least median of squares)."""
    matrix, _ = cv2.estimateAffinePartial2D(points5.astype(np.float32),
                                            template_5_points(out_size).astype(np.float32), method=cv2.LMEDS)
    if matrix is None or not np.all(np.isfinite(matrix)):
        raise LandmarkError("no similarity transform fits the 5 points")
    return matrix.astype(np.float64)


def _homogeneous(matrix: np.ndarray) -> np.ndarray:
    return np.vstack([matrix, [0.0, 0.0, 1.0]])


def _scale_of(matrix: np.ndarray) -> float:
    return math.sqrt(abs(float(np.linalg.det(matrix[:, :2]))))


def _pixel_scale(factor_x: float, factor_y: float) -> np.ndarray:
    """Pixel-centre map of a resize by (fx, fy): x' = (x + 0.5) * f - 0.5 (cv2.resize's convention)."""
    return np.array([[factor_x, 0.0, 0.5 * factor_x - 0.5], [0.0, factor_y, 0.5 * factor_y - 0.5], [0, 0, 1.0]])


def warp_antialiased(source: np.ndarray, matrix: np.ndarray, size: tuple[int, int], *, border: int,
                     interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """cv2.warpAffine, but a warp that shrinks more than 2x area-downsamples its source first (no aliasing)."""
    scale = _scale_of(matrix)
    if scale < ANTIALIAS_BELOW_SCALE:
        height, width = source.shape[:2]
        factor = scale / ANTIALIAS_BELOW_SCALE
        small = (max(round(width * factor), 1), max(round(height * factor), 1))
        source = cv2.resize(source, small, interpolation=cv2.INTER_AREA)
        pre = _pixel_scale(small[0] / width, small[1] / height)
        matrix = (_homogeneous(matrix) @ np.linalg.inv(pre))[:2]
    return cv2.warpAffine(source, matrix, size, flags=interpolation, borderMode=border)


def _footprint(matrix_to_target: np.ndarray, out_size: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer box [x0, x1) x [y0, y1) in the target covering the mapped out_size square, plus a margin."""
    edge = out_size - 0.5
    corners = np.array([[-0.5, -0.5, 1], [edge, -0.5, 1], [edge, edge, 1], [-0.5, edge, 1]]).T
    mapped = (matrix_to_target @ corners).T
    x0 = max(int(math.floor(mapped[:, 0].min())) - ROI_MARGIN, 0)
    y0 = max(int(math.floor(mapped[:, 1].min())) - ROI_MARGIN, 0)
    x1 = min(int(math.ceil(mapped[:, 0].max())) + ROI_MARGIN + 1, width)
    y1 = min(int(math.ceil(mapped[:, 1].max())) + ROI_MARGIN + 1, height)
    return x0, y0, x1, y1


def crop_face(image: np.ndarray, matrix: np.ndarray, out_size: int) -> np.ndarray:
    """The aligned out_size crop (border reflect), warping only the face's region of the photo."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = _footprint(cv2.invertAffineTransform(matrix), out_size, width, height)
    if x1 <= x0 or y1 <= y0:  # the face lies wholly outside the frame: warp the whole photo (reflected)
        x0, y0, x1, y1 = 0, 0, width, height
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, :2] @ np.array([x0, y0], dtype=np.float64)
    return warp_antialiased(image[y0:y1, x0:x1], shifted, (out_size, out_size), border=cv2.BORDER_REFLECT_101)


def _output_transform(matrix: np.ndarray, upscale: int) -> np.ndarray:
    """Template -> output pixels: the inverse similarity followed by the pixel-centre upscale."""
    inverse = _homogeneous(cv2.invertAffineTransform(matrix))
    return (_pixel_scale(upscale, upscale) @ inverse)[:2]


def feathered_mask(footprint_mask: np.ndarray) -> np.ndarray:
    """Erode the warped face square, then blur it: the restored face fades into the background at its edge."""
    area = float(footprint_mask.sum())
    edge = int(math.sqrt(area) * EDGE_FRACTION)
    if edge < 1:
        return footprint_mask
    kernel = np.ones((EROSION_EDGES * edge, EROSION_EDGES * edge), np.uint8)
    eroded = cv2.erode(footprint_mask, kernel)
    blur = EROSION_EDGES * edge + 1
    return cv2.GaussianBlur(eroded, (blur, blur), 0)


def paste_face(canvas: np.ndarray, restored: np.ndarray, matrix: np.ndarray, upscale: int) -> None:
    """Blend one restored face (out_size) into the output canvas (in place), touching only its region."""
    out_size = restored.shape[0]
    height, width = canvas.shape[:2]
    to_output = _output_transform(matrix, upscale)
    x0, y0, x1, y1 = _footprint(to_output, out_size, width, height)
    if x1 <= x0 or y1 <= y0:
        return
    shifted = to_output.copy()
    shifted[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    face = warp_antialiased(restored, shifted, size, border=cv2.BORDER_REFLECT_101).astype(np.float32)
    square = np.ones((out_size, out_size), np.float32)
    footprint = cv2.warpAffine(square, shifted, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=0)
    mask = feathered_mask(footprint)[:, :, None]
    region = canvas[y0:y1, x0:x1].astype(np.float32)
    blended = face * mask + region * (1.0 - mask)
    canvas[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, MAX_8BIT).astype(np.uint8)


def resample(image: np.ndarray, upscale: int) -> np.ndarray:
    """The background at output size (Lanczos), or a copy at upscale 1."""
    if upscale == 1:
        return image.copy()
    height, width = image.shape[:2]
    return cv2.resize(image, (width * upscale, height * upscale), interpolation=cv2.INTER_LANCZOS4)


def attach_alpha(rgb_on_white: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """RGBA from colours composited on white: un-composite c = (v - 255 (1 - a)) / a, then add the alpha."""
    a = alpha.astype(np.float32)[:, :, None] / MAX_8BIT
    straight = (rgb_on_white.astype(np.float32) - MAX_8BIT * (1.0 - a)) / np.maximum(a, 1.0 / MAX_8BIT)
    colours = np.where(a > 0, straight, rgb_on_white.astype(np.float32))
    colours = np.clip(np.rint(colours), 0, MAX_8BIT).astype(np.uint8)
    return np.dstack([colours, alpha])


def face_box(matrix: np.ndarray, out_size: int, upscale: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) in output pixels of the area a restored crop was pasted into, clipped to it."""
    corners = np.array([[0, 0], [out_size, 0], [0, out_size], [out_size, out_size]], dtype=np.float64)
    inverse = np.linalg.inv(_homogeneous(matrix))
    points = (np.c_[corners - 0.5, np.ones(4)] @ inverse.T)[:, :2] + 0.5  # pixel edges, not centres
    points *= upscale
    height, width = shape
    left, top = np.floor(points.min(axis=0)).astype(int)
    right, bottom = np.ceil(points.max(axis=0)).astype(int)
    return max(int(left), 0), max(int(top), 0), min(int(right), width), min(int(bottom), height)


def face_size(matrix: np.ndarray, out_size: int, upscale: int) -> float:
    """Output pixels covered by the side of a face's aligned out_size crop (what the model's output is stretched to)."""
    return out_size * upscale / _scale_of(matrix)

