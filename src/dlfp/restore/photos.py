"""`dlfp restore INPUT... -o OUTDIR`: restore every face in a user's own photos and paste it back.

Per photo: decode (EXIF rotation applied, any mode to 8-bit RGB, alpha kept aside), detect every face with dlib
(HOG, or the CNN/mmod detector), take the template's 5 points from the 68 landmarks (gfpgan-spec 5b: dlib's own
5-point model gives other points), fit a similarity to the 512 template scaled to the model's out_size
(cv2.estimateAffinePartial2D, LMEDS), warp the face crop (border reflect), restore it, warp it back with the
inverse transform and blend it with a feathered mask over the background, resampled (Lanczos) when
`upscale` > 1. Faces are batched across photos.

Outputs in OUTDIR (all written atomically; nothing is ever written outside OUTDIR):
- `restored/<relative name>.<ext>`: the photo at input size x upscale. `ext` "auto" keeps the input's format (JPEG
  -> .jpg, PNG -> .png, WebP -> .webp, anything else -> .png); png/jpg/webp force one. JPEG and WebP use `quality`.
  The input's ICC profile is kept (the sRGB profile when decoding converted the pixels to sRGB); alpha is kept in
  PNG and WebP; JPEG has none, so an input with alpha written as JPEG is composited on white (noted in its row).
  Photos without a restorable face are copied through (the same resampled background) with their status.
- `faces/<relative name>/face_NN_before.png`, `face_NN_after.png`: each aligned crop at the model's out_size.
- Every image written carries an XMP provenance label (dlfp.restore.provenance): IPTC digital source type
  compositeWithTrainedAlgorithmicMedia, xmp:CreatorTool, the weights' sha256 and the restored face boxes.
- `summary.json` and `summary.csv`: one row per photo (input, output, faces_found, faces_restored,
  faces_skipped_small, faces_skipped_landmarks, faces_skipped_off_centre, faces_skipped_too_large, seconds and
  its split, status, reason). summary.json's `run` also names the weights file and its sha256.
  seconds is the photo's own time: decode and writes + detection + alignment/warp + its share of the network
  batches (batch time / faces in the batch) + paste-back; the wait while other photos fill a batch is not in it.
- `index.html`: before/after views, self-contained, relative links, every name escaped.

Decisions:
- Status: "ok" (at least one face restored), "no face" (the detector found none), "face too small" (all found
  faces below `min_face_size`), "no usable face" (found faces' landmarks implausible or, with
  `only_center_face`, none left), "model resolution too low" (every usable face larger than `too_large_ratio` x
  the model's out_size in output pixels: restoring would paste a blurred, upsampled face; the reason names both
  sizes; `force` restores them anyway): all five are successes, with the photo copied through. "failed": no output
  (corrupt, truncated, zero-byte, non-image, too large, unreadable, output would replace an input).
- faces_found is dlib's detector count on the detection image; every found face is either restored or counted
  in exactly one faces_skipped_* column.
- Output names keep the input's relative path (unicode, spaces and shell characters included) with the suffix
  replaced by the output's; clashes (same name from two INPUT folders, or a.jpg beside a.png) get "-2", "-3"... in
  sorted input order. Folders are walked recursively for image suffixes; hidden files and OUTDIR are skipped.
- Outputs are never overwritten: a run whose outputs (or summary/index) already exist stops before any work
  with OutputExistsError unless `overwrite`. Inputs are only read.
- Alpha: the colour pipeline runs on the image composited on white (what dlfp.io.images gives); at the end the
  colours are un-composited with the (resampled) alpha and the alpha is re-attached (RGBA PNG).
- Size limit: `max_pixels` bounds the OUTPUT (input pixels x upscale^2), checked from the header before decoding.
- Large photos are searched for faces at a reduced size (HOG_DETECT_MAX_SIDE / CNN_DETECT_MAX_SIDE); landmarks,
  crops and paste-back use full resolution.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import math
import os
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageCms, ImageOps
from tqdm import tqdm

from dlfp.data.landmarks import (
    CNN_FALLBACK_MAX_SIDE,
    Detector,
    FaceBox,
    FaceLandmarker,
    LandmarkError,
    check_landmarks,
    template_5_points,
    template_points,
)
from dlfp.io.atomic import open_lock_file, write_bytes_atomic, write_csv_atomic, write_json_atomic, write_text_atomic
from dlfp.io.images import (
    DEFAULT_QUALITY,
    OUTPUT_FORMATS,
    ImageRejected,
    decode_image_bytes,
    encode_image,
)
from dlfp.restore import provenance

log = logging.getLogger(__name__)

# The train stage's output; the one default for own photos (the official GFPGANv1.4.pth also loads).
DEFAULT_WEIGHTS = Path("models/gfpgan/gfpgan.pth")
OFFICIAL_WEIGHTS_NAME = "GFPGANv1.4.pth"

DEFAULT_UPSCALE = 1
MAX_UPSCALE = 8
DEFAULT_MIN_FACE_SIZE = 24        # detection box side (input px): below it the 68 points are guesses
DEFAULT_MAX_PIXELS = 64_000_000   # OUTPUT pixels (a 4032x3024 phone photo at upscale 2 is 48.8 M)
DEFAULT_BATCH_SIZE = 4
# A face whose aligned crop covers more than this x out_size output pixels would come back upsampled by more than
# 1.5x, blurrier than the input: it is left as it is (and reported) unless `force`.
DEFAULT_TOO_LARGE_RATIO = 1.5
HOG_UPSAMPLE = 1                  # HOG finds faces down to about 40 px at upsample 1 (80 px at 0)
HOG_DETECT_MAX_SIDE = 2048        # larger photos are searched at this longest side (time grows with pixels)
CNN_DETECT_MAX_SIDE = CNN_FALLBACK_MAX_SIDE
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
OUTPUT_EXTS = ("auto", *OUTPUT_FORMATS)
AUTO_EXT_OF_FORMAT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # any other input format -> png
MAX_NAME_BYTES = 200              # file names stay under the usual 255-byte limit with suffixes added

# Warping and blending (the reference's FaceRestoreHelper.paste_faces_to_input_image, pixel-centre exact).
ANTIALIAS_BELOW_SCALE = 0.5       # a warp shrinking more than 2x first area-downsamples its source
ROI_MARGIN = 2                    # px around a face's footprint (linear interpolation reads 1 px beyond)
EDGE_FRACTION = 1 / 20            # feather width = sqrt(face area in output px) / 20, as the reference
EROSION_EDGES = 2                 # the mask is eroded by 2 feather widths, then blurred over 2 widths
MAX_8BIT = 255.0

STATUS_OK = "ok"
STATUS_NO_FACE = "no face"
STATUS_TOO_SMALL = "face too small"
STATUS_NO_USABLE_FACE = "no usable face"
STATUS_RESOLUTION_TOO_LOW = "model resolution too low"
STATUS_FAILED = "failed"
SUCCESS_STATUSES = (STATUS_OK, STATUS_NO_FACE, STATUS_TOO_SMALL, STATUS_NO_USABLE_FACE, STATUS_RESOLUTION_TOO_LOW)

SUMMARY_JSON, SUMMARY_CSV, INDEX_HTML = "summary.json", "summary.csv", "index.html"
RESTORED_DIR, FACES_DIR = "restored", "faces"
LOCK_NAME = ".dlfp-restore.lock"
CROP_GLOB = "face_*_*.png"
TEMPLATE_NAME = "photos.html"
SUMMARY_COLUMNS = ("input", "output", "faces_found", "faces_restored", "faces_skipped_small",
                   "faces_skipped_landmarks", "faces_skipped_off_centre", "faces_skipped_too_large", "width", "height",
                   "out_width", "out_height", "seconds", "seconds_detect", "seconds_align", "seconds_network",
                   "seconds_paste", "seconds_io", "status", "reason")
SECONDS_DECIMALS = 4


class PhotosUsageError(ValueError):
    """The command line cannot work as given (bad option value, OUTDIR a file, outputs exist): exit code 2."""


class OutputExistsError(PhotosUsageError):
    """Outputs of this run already exist and `overwrite` is off."""


class WeightsNotFoundError(RuntimeError):
    """No restoration weights at the given path; the message says where to put them."""


# -------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class PhotoSource:
    """One input file and the names its outputs get (relative POSIX paths inside OUTDIR, without suffix)."""

    path: Path
    display: str      # the input as the user gave it (INPUT folder joined with the path found in it)
    name: str         # e.g. "holiday/beach photo" -> restored/holiday/beach photo.png, faces/holiday/beach photo/


def _truncate_utf8(text: str, limit: int) -> str:
    encoded = text.encode("utf-8")
    return text if len(encoded) <= limit else encoded[:limit].decode("utf-8", errors="ignore")


def _safe_part(part: str) -> str:
    """One path component: no separators, no control characters, never '.', '..' or empty."""
    cleaned = "".join("_" if ch in "/\\" or ord(ch) < 32 or ord(ch) == 127 else ch for ch in part)
    cleaned = _truncate_utf8(cleaned, MAX_NAME_BYTES)
    return "_" + cleaned if cleaned in ("", ".", "..") else cleaned


def _walk_images(folder: Path, skip: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) under `folder`, recursively, sorted; hidden entries and `skip` left out."""
    images, others = [], []
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (root_path / d).resolve() != skip)
        for file_name in sorted(files):
            if file_name.startswith("."):
                continue
            path = root_path / file_name
            (images if path.suffix.lower() in IMAGE_SUFFIXES else others).append(path)
    return images, others


def collect_inputs(inputs: Sequence[Path | str], out_dir: Path) -> list[PhotoSource]:
    """Files as given (any suffix: a non-image gets its own status) and image files of folders, deduplicated."""
    skip = Path(out_dir).resolve()
    sources: list[PhotoSource] = []
    seen: set[Path] = set()
    taken: set[str] = set()
    ignored = 0
    for given in inputs:
        given = Path(given)
        if given.is_dir():
            images, others = _walk_images(given, skip)
            ignored += len(others)
            entries = [(path, path.relative_to(given)) for path in images]
        else:
            entries = [(given, Path(given.name))]
        for path, relative in entries:
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            parts = [_safe_part(part) for part in relative.parts]
            parts[-1] = _safe_part(Path(parts[-1]).stem if Path(parts[-1]).suffix else parts[-1])
            base = "/".join(parts)
            name, number = base, 1
            while name in taken:
                number += 1
                name = f"{base}-{number}"
            taken.add(name)
            sources.append(PhotoSource(path=path, display=str(path), name=name))
    if ignored:
        log.info("restore: ignored %d file(s) without an image suffix (%s) in the input folders", ignored,
                 ", ".join(sorted(IMAGE_SUFFIXES)))
    return sources


# --------------------------------------------------------------------------------------- decoding
@dataclass
class DecodedPhoto:
    rgb: np.ndarray                  # composited on white (what detection and restoration see)
    alpha: np.ndarray | None         # (H, W) uint8 in the displayed orientation, when the file has alpha
    notes: tuple[str, ...] = ()
    icc_profile: bytes | None = None  # for the output: the input's, or sRGB's when decoding converted to sRGB


def _header_pixels(data: bytes) -> int | None:
    """Pixel count from the header alone (None when Pillow cannot even read a header: decode says why)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - any failure here is reported by the real decoder with its reason
        return None
    return width * height


def output_ext(path: Path, ext: str) -> str:
    """The restored photo's suffix: `ext` itself, or for "auto" the input's format from its header (else png)."""
    if ext != "auto":
        return ext
    try:
        with Image.open(path) as image:
            return AUTO_EXT_OF_FORMAT.get(image.format or "", "png")
    except Exception:  # noqa: BLE001 - unreadable inputs fail later with their reason; their name stays .png
        return "png"


def _output_icc(data: bytes, notes: Sequence[str]) -> bytes | None:
    """The ICC profile for the output: sRGB's when decoding converted the pixels to sRGB, else the input's own."""
    with Image.open(io.BytesIO(data)) as image:
        icc = image.info.get("icc_profile")
    if not icc or any(note.startswith("ICC profile ignored") for note in notes):
        return None
    if any(note.endswith("converted to sRGB") for note in notes):
        return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return icc


def _alpha_channel(data: bytes, shape: tuple[int, int]) -> np.ndarray | None:
    """The alpha channel in the displayed (EXIF) orientation, or None for files without one."""
    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)
        has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
            image.mode == "P" and "transparency" in image.info)
        if not has_alpha:
            return None
        upright = ImageOps.exif_transpose(image) or image
        alpha = np.asarray(upright.convert("RGBA").getchannel("A"), dtype=np.uint8)
    if alpha.shape != shape:
        return None  # cannot happen for the formats Pillow decodes; never attach a mis-sized alpha
    return np.ascontiguousarray(alpha)


def decode_photo(path: Path, *, upscale: int, max_pixels: int) -> DecodedPhoto:
    """Read and normalise one photo, or raise ImageRejected with the reason (size checked before decoding)."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ImageRejected(path, "is a folder, not a file") from None
    except FileNotFoundError:
        raise ImageRejected(path, "no such file") from None
    except OSError as error:
        raise ImageRejected(path, f"unreadable: {error.strerror or error}") from None
    pixels = _header_pixels(data)
    if pixels is not None and pixels * upscale * upscale > max_pixels:
        raise ImageRejected(path, f"too large: {pixels} pixels x upscale {upscale}^2 = {pixels * upscale ** 2} "
                                  f"output pixels, limit {max_pixels} (not decoded; lower --upscale or raise "
                                  f"--max-pixels)")
    decoded = decode_image_bytes(data, source=path, max_pixels=max(max_pixels // (upscale * upscale), 1), min_side=1)
    alpha = _alpha_channel(data, decoded.rgb.shape[:2])
    return DecodedPhoto(decoded.rgb, alpha, decoded.notes, _output_icc(data, decoded.notes))


# -------------------------------------------------------------------------------------- geometry
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


def encode_png_any(pixels: np.ndarray) -> bytes:
    """Deterministic PNG of RGB or RGBA uint8 pixels (no metadata)."""
    return encode_image(pixels, "png")


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


# -------------------------------------------------------------------------------------------- faces
@dataclass
class FaceCounts:
    found: int = 0
    small: int = 0
    landmarks: int = 0
    off_centre: int = 0
    too_large: int = 0


@dataclass
class PhotoResult:
    """One summary row (plus the crops for the HTML page)."""

    input: str
    output: str = ""
    faces_found: int = 0
    faces_restored: int = 0
    faces_skipped_small: int = 0
    faces_skipped_landmarks: int = 0
    faces_skipped_off_centre: int = 0
    faces_skipped_too_large: int = 0
    width: int = 0
    height: int = 0
    out_width: int = 0
    out_height: int = 0
    seconds: float = 0.0
    seconds_detect: float = 0.0
    seconds_align: float = 0.0
    seconds_network: float = 0.0
    seconds_paste: float = 0.0
    seconds_io: float = 0.0
    status: str = STATUS_FAILED
    reason: str = ""
    notes: str = ""
    crops: list[dict[str, str]] = field(default_factory=list)
    too_large_sizes: list[int] = field(default_factory=list)  # output px of each face left as it was

    def own_seconds(self) -> float:
        """This photo's own time: its parts, not the wait while other photos filled its network batches."""
        return (self.seconds_io + self.seconds_detect + self.seconds_align + self.seconds_network
                + self.seconds_paste)

    def row(self) -> list[object]:
        values = asdict(self)
        return [round(values[c], SECONDS_DECIMALS) if c.startswith("seconds") else values[c]
                for c in SUMMARY_COLUMNS]


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


def face_size(matrix: np.ndarray, out_size: int, upscale: int) -> float:
    """Output pixels covered by the side of a face's aligned out_size crop (what the model's output is stretched to)."""
    return out_size * upscale / _scale_of(matrix)


def resolution_too_low(out_size: int, sizes: Sequence[int]) -> str:
    """The reason text for faces left as they were, e.g. 'model resolution too low (64 px model, 250 px face)'."""
    faces = ", ".join(f"{size} px" for size in sizes)
    return f"{STATUS_RESOLUTION_TOO_LOW} ({out_size} px model, {faces} face{'s' if len(sizes) > 1 else ''})"


def _status(result: PhotoResult, min_face_size: int, out_size: int) -> tuple[str, str]:
    skipped = []
    if result.faces_skipped_small:
        skipped.append(f"{result.faces_skipped_small} below the minimum face size {min_face_size} px")
    if result.faces_skipped_landmarks:
        skipped.append(f"{result.faces_skipped_landmarks} with implausible landmarks")
    if result.faces_skipped_off_centre:
        skipped.append(f"{result.faces_skipped_off_centre} off-centre (--only-center-face)")
    too_large = ""
    if result.faces_skipped_too_large:
        count = result.faces_skipped_too_large
        left = "1 left as it was (--force restores it" if count == 1 else \
            f"{count} left as they were (--force restores them"
        too_large = f"{resolution_too_low(out_size, result.too_large_sizes)}: {left} anyway)"
    if result.faces_restored:
        detail = "; ".join([*skipped, *([too_large] if too_large else [])])
        return STATUS_OK, f"skipped: {detail}" if detail else ""
    if not result.faces_found:
        return STATUS_NO_FACE, "dlib found no face; photo copied through"
    if too_large:  # the resolution is what kept the usable faces from being restored: say that first
        return STATUS_RESOLUTION_TOO_LOW, "; ".join([too_large, *skipped, "photo copied through"])
    status = STATUS_TOO_SMALL if result.faces_skipped_small == result.faces_found else STATUS_NO_USABLE_FACE
    return status, f"{'; '.join(skipped)}; photo copied through"


# ------------------------------------------------------------------------------------------ the run
@dataclass(eq=False)  # compared by identity: its fields hold numpy arrays
class _Pending:
    """A decoded photo waiting for its faces to come back from the network."""

    source: PhotoSource
    result: PhotoResult
    photo: DecodedPhoto
    matrices: list[np.ndarray]
    crops: list[np.ndarray]
    restored: list[np.ndarray | None]

    @property
    def done(self) -> bool:
        return all(face is not None for face in self.restored)


def _relative_url(path: str) -> str:
    return urllib.parse.quote(path, safe="/")


class _PhotoRun:
    """State of one run: the model, the detector, the face queue and the finished rows."""

    def __init__(self, out_dir: Path, restorer, out_size: int, landmarker: FaceLandmarker, *, upscale: int,
                 only_center_face: bool, min_face_size: int, max_pixels: int, batch_size: int,
                 too_large_ratio: float, force: bool, input_paths: set[Path], progress: tqdm,
                 exts: dict[str, str], quality: int, weights_sha256: str) -> None:
        self.out_dir = out_dir
        self.restorer = restorer
        self.out_size = out_size
        self.landmarker = landmarker
        self.upscale = upscale
        self.only_center_face = only_center_face
        self.min_face_size = min_face_size
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self.too_large_ratio = too_large_ratio
        self.force = force
        self.input_paths = input_paths
        self.progress = progress
        self.exts = exts
        self.quality = quality
        self.weights_sha256 = weights_sha256
        self.queue: list[tuple[_Pending, int]] = []
        self.results: dict[str, PhotoResult] = {}

    # ---- per photo, before the network
    def add(self, source: PhotoSource) -> None:
        started = time.perf_counter()
        result = PhotoResult(input=source.display)
        self.results[source.name] = result
        try:
            photo = decode_photo(source.path, upscale=self.upscale, max_pixels=self.max_pixels)
        except ImageRejected as error:
            result.reason = error.reason
            result.seconds_io = result.seconds = time.perf_counter() - started
            self.progress.update(1)
            log.debug("restore: %s", error)
            return
        result.seconds_io = time.perf_counter() - started
        result.height, result.width = photo.rgb.shape[:2]
        result.notes = "; ".join(photo.notes)
        try:
            self._prepare(source, result, photo)
        except (cv2.error, ValueError, MemoryError) as error:  # one bad photo must not stop the others
            log.debug("restore: %s", source.path, exc_info=True)
            result.reason = f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:200]}"
            result.seconds = result.own_seconds()
            self.progress.update(1)
            return
        while len(self.queue) >= self.batch_size:  # outside the try: a network failure is not this photo's
            self._run_batch()

    def _prepare(self, source: PhotoSource, result: PhotoResult, photo: DecodedPhoto) -> None:
        """Detection, landmarks and aligned crops; the crops join the network queue."""
        tick = time.perf_counter()
        boxes = detect_faces(self.landmarker, photo.rgb)
        result.seconds_detect = time.perf_counter() - tick

        tick = time.perf_counter()
        points, counts = select_faces(self.landmarker, photo.rgb, boxes, min_face_size=self.min_face_size,
                                      only_center_face=self.only_center_face)
        matrices, crops = [], []
        for face_points in points:
            try:
                matrix = similarity_to_template(face_points, self.out_size)
            except LandmarkError:
                counts.landmarks += 1
                continue
            size = face_size(matrix, self.out_size, self.upscale)
            if not self.force and size > self.too_large_ratio * self.out_size:
                counts.too_large += 1
                result.too_large_sizes.append(round(size))
                continue
            matrices.append(matrix)
            crops.append(crop_face(photo.rgb, matrix, self.out_size))
        result.seconds_align = time.perf_counter() - tick
        result.faces_found, result.faces_skipped_small = counts.found, counts.small
        result.faces_skipped_landmarks, result.faces_skipped_off_centre = counts.landmarks, counts.off_centre
        result.faces_skipped_too_large = counts.too_large

        pending = _Pending(source, result, photo, matrices, crops, [None] * len(crops))
        if not crops:
            self._finish(pending)
            return
        self.queue += [(pending, index) for index in range(len(crops))]

    # ---- the network, on faces from any photos
    def _run_batch(self) -> None:
        batch, self.queue = self.queue[:self.batch_size], self.queue[self.batch_size:]
        tick = time.perf_counter()
        outputs = self.restorer.restore_batch([pending.crops[index] for pending, index in batch], [{}] * len(batch))
        share = (time.perf_counter() - tick) / len(batch)
        finished = []
        for (pending, index), face in zip(batch, outputs, strict=True):
            pending.restored[index] = face
            pending.result.seconds_network += share
            if pending.done and pending not in finished:
                finished.append(pending)
        for pending in finished:
            self._finish(pending)

    def flush(self) -> None:
        while self.queue:
            self._run_batch()

    # ---- per photo, after the network
    def _finish(self, pending: _Pending) -> None:
        result, source, photo = pending.result, pending.source, pending.photo
        tick = time.perf_counter()
        canvas = resample(photo.rgb, self.upscale)
        for matrix, face in zip(pending.matrices, pending.restored, strict=True):
            paste_face(canvas, face, matrix, self.upscale)  # type: ignore[arg-type]
        ext = self.exts[source.name]
        if photo.alpha is not None and ext == "jpg":
            result.notes = "; ".join(filter(None, [result.notes, "alpha composited on white (JPEG has no alpha)"]))
        elif photo.alpha is not None:
            canvas = attach_alpha(canvas, resample(photo.alpha, self.upscale))
        result.seconds_paste = time.perf_counter() - tick
        result.out_height, result.out_width = canvas.shape[:2]
        result.faces_restored = len(pending.matrices)
        result.status, result.reason = _status(result, self.min_face_size, self.out_size)

        tick = time.perf_counter()
        output = f"{RESTORED_DIR}/{source.name}.{ext}"
        if (self.out_dir / output).resolve() in self.input_paths:
            result.status, result.reason = STATUS_FAILED, "the output would replace an input file; choose another -o"
        else:
            boxes = [face_box(matrix, self.out_size, self.upscale, canvas.shape[:2]) for matrix in pending.matrices]
            xmp = provenance.xmp_packet(weights_sha256=self.weights_sha256, faces=boxes, role="restored photo")
            write_bytes_atomic(self.out_dir / output, encode_image(
                canvas, ext, quality=self.quality, icc_profile=photo.icc_profile, xmp=xmp))
            result.output = output
            whole = (0, 0, self.out_size, self.out_size)
            before_xmp = provenance.xmp_packet(weights_sha256=self.weights_sha256, faces=(),
                                               role="aligned face crop before restoration")
            after_xmp = provenance.xmp_packet(weights_sha256=self.weights_sha256, faces=(whole,),
                                              role="face crop after restoration")
            for number, (crop, face) in enumerate(zip(pending.crops, pending.restored, strict=True)):
                before = f"{FACES_DIR}/{source.name}/face_{number:02d}_before.png"
                after = f"{FACES_DIR}/{source.name}/face_{number:02d}_after.png"
                write_bytes_atomic(self.out_dir / before, encode_image(crop, "png", xmp=before_xmp))
                write_bytes_atomic(self.out_dir / after, encode_image(face, "png", xmp=after_xmp))  # type: ignore[arg-type]
                result.crops.append({"before": before, "after": after})
            self._remove_stale_crops(self.out_dir / FACES_DIR / source.name, result.crops)
        result.seconds_io += time.perf_counter() - tick
        result.seconds = result.own_seconds()
        self.progress.update(1)
        self.progress.set_postfix_str(f"faces {sum(r.faces_restored for r in self.results.values())}")


    @staticmethod
    def _remove_stale_crops(folder: Path, crops: list[dict[str, str]]) -> None:
        """With --overwrite, crops of an earlier run that this run did not write again (fewer faces) go."""
        if not folder.is_dir():
            return
        written = {Path(path).name for crop in crops for path in crop.values()}
        for stale in folder.glob(CROP_GLOB):
            if stale.name not in written and stale.is_file():
                stale.unlink()


def _planned_outputs(out_dir: Path, sources: Sequence[PhotoSource], exts: dict[str, str]) -> list[Path]:
    """Files this run would certainly write (face crops are inside each photo's own faces/ folder)."""
    planned = [out_dir / SUMMARY_JSON, out_dir / SUMMARY_CSV, out_dir / INDEX_HTML]
    for source in sources:
        planned += [out_dir / RESTORED_DIR / f"{source.name}.{exts[source.name]}", out_dir / FACES_DIR / source.name]
    return planned


@contextlib.contextmanager
def _outdir_lock(out_dir: Path) -> Iterator[None]:
    """Refuse a second concurrent run on the same OUTDIR (the lock file lives inside OUTDIR, never beside it).

    Opened without following a symlink and never truncated, so a planted link cannot damage another file."""
    with open_lock_file(out_dir / LOCK_NAME) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PhotosUsageError(f"{out_dir} is being written by another dlfp restore run; wait for it") from None
        yield


def _check_outdir_is_no_input(inputs: Sequence[Path | str], out_dir: Path) -> None:
    """OUTDIR equal to an input folder would put outputs among the inputs (read back as inputs by a rerun)."""
    for given in inputs:
        if Path(given).is_dir() and Path(given).resolve() == out_dir.resolve():
            raise PhotosUsageError(f"-o {out_dir}: is the input folder {given}; choose another folder (outputs "
                                   "in an input folder would be read back as inputs)")


def _check_outputs(out_dir: Path, sources: Sequence[PhotoSource], exts: dict[str, str], overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise PhotosUsageError(f"-o {out_dir}: exists and is not a folder")
    root = out_dir.resolve()
    planned = _planned_outputs(out_dir, sources, exts)
    for path in planned:
        if not path.resolve().is_relative_to(root):  # a symlink inside OUTDIR pointing elsewhere
            raise PhotosUsageError(f"{path}: resolves outside {out_dir} ({path.resolve()}); refusing to write there")
    existing = [path for path in planned if path.exists()]
    if existing and not overwrite:
        listed = ", ".join(str(path) for path in existing[:5]) + (" ..." if len(existing) > 5 else "")
        raise OutputExistsError(f"{len(existing)} output(s) already exist ({listed}); outputs are never "
                                f"overwritten: pass --overwrite, or choose another -o folder")


def _resolve_weights(weights: Path | str | None, progress: bool) -> tuple[Path, dict[str, object]]:
    """The weights file and what the summary records about it: a path as given, or an official release name
    (fetched into $DLFP_CACHE/weights on first use); WeightsNotFoundError says where the file goes."""
    from dlfp.restore import official_weights

    if official_weights.is_official_name(weights):
        try:
            fetched = official_weights.fetch(str(weights), progress=progress)
        except official_weights.OfficialWeightsError as error:
            raise WeightsNotFoundError(str(error)) from None
        return fetched.path, fetched.record()
    path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        names = " or ".join(official_weights.OFFICIAL_NAMES)
        raise WeightsNotFoundError(
            f"no restoration weights at {path}. Put a dl-fp checkpoint there (`dlfp train` writes "
            f"{DEFAULT_WEIGHTS}), or pass --weights PATH, e.g. the official {OFFICIAL_WEIGHTS_NAME}, or "
            f"--weights {names} to download the official release file into $DLFP_CACHE/weights.")
    return path, {"file": str(path), "sha256": official_weights.sha256_of(path)}


def _load_restorer(weights: Path, batch_size: int, device: str):
    """The GFP-GAN restorer, or WeightsNotFoundError that says where the file goes."""
    from dlfp.restore.restorers import RestorerUnavailable, gfpgan_restorer

    try:
        return gfpgan_restorer(weights, None, batch_size=batch_size, device=device)
    except RestorerUnavailable as error:
        raise WeightsNotFoundError(str(error)) from None


@lru_cache(maxsize=2)
def _landmarker(detector: Detector) -> FaceLandmarker:
    """One detector + shape predictor per process and kind (loading the 68-point model takes seconds)."""
    return FaceLandmarker(detector, upsample=HOG_UPSAMPLE)


def _check_options(upscale: int, batch_size: int, min_face_size: int, max_pixels: int, device: str,
                   detector: str, too_large_ratio: float, ext: str = "auto", quality: int = DEFAULT_QUALITY) -> None:
    if not 1 <= upscale <= MAX_UPSCALE:
        raise PhotosUsageError(f"--upscale must be an integer from 1 to {MAX_UPSCALE}, got {upscale}")
    if batch_size < 1 or min_face_size < 0 or max_pixels < 1:
        raise PhotosUsageError(f"--batch-size and --max-pixels must be >= 1 and --min-face-size >= 0 "
                               f"(got {batch_size}, {max_pixels}, {min_face_size})")
    if ext not in OUTPUT_EXTS:
        raise PhotosUsageError(f"--ext must be one of {', '.join(OUTPUT_EXTS)}, got {ext!r}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise PhotosUsageError(f"--quality must be an integer from 1 to 100, got {quality!r}")
    if not too_large_ratio > 0:
        raise PhotosUsageError(f"--too-large-ratio must be > 0, got {too_large_ratio}")
    if detector not in ("hog", "cnn"):
        raise PhotosUsageError(f"--detector must be hog or cnn, got {detector!r}")
    if device not in ("auto", "cpu", "cuda"):
        raise PhotosUsageError(f"--device must be cpu, cuda or auto, got {device!r}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise PhotosUsageError("--device cuda: no CUDA device is available here; use --device cpu")


def render_index(results: Sequence[PhotoResult], run_info: dict) -> str:
    """index.html: per photo its status, the restored photo and each face before/after (relative links)."""
    from dlfp.report.build import make_env

    rows = []
    for result in results:
        rows.append({**asdict(result), "output_url": _relative_url(result.output) if result.output else "",
                     "faces": [{"before": _relative_url(c["before"]), "after": _relative_url(c["after"])}
                               for c in result.crops]})
    return make_env().get_template(TEMPLATE_NAME).render(
        title="Restored photos", nav=(), current=INDEX_HTML, photos=rows, run=run_info)


def run_photos(inputs: Sequence[Path | str], out_dir: Path | str, *, weights: Path | str | None = None,
               upscale: int = DEFAULT_UPSCALE, only_center_face: bool = False, detector: Detector = "hog",
               device: str = "auto", overwrite: bool = False, min_face_size: int = DEFAULT_MIN_FACE_SIZE,
               max_pixels: int = DEFAULT_MAX_PIXELS, batch_size: int = DEFAULT_BATCH_SIZE,
               too_large_ratio: float = DEFAULT_TOO_LARGE_RATIO, force: bool = False, progress: bool = True,
               ext: str = "auto", quality: int = DEFAULT_QUALITY) -> dict:
    """Restore every face in the input photos into out_dir; returns the summary (also summary.json).

    `weights`: a checkpoint path, or an official release name (gfpgan-v1.3, gfpgan-v1.4: downloaded once into
    $DLFP_CACHE/weights). Faces larger than `too_large_ratio` x the model's out_size (output px) are left as they
    are, with the reason, unless `force`. `ext` (auto|png|jpg|webp) and `quality` (JPEG/WebP, 1..100) choose the
    restored photos' format; every image written carries the XMP provenance label.

    Raises PhotosUsageError (bad options, outputs exist) and WeightsNotFoundError before any photo is touched;
    per-photo problems become that photo's status instead.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    _check_options(upscale, batch_size, min_face_size, max_pixels, device, detector, too_large_ratio, ext, quality)
    _check_outdir_is_no_input(inputs, out_dir)
    sources = collect_inputs(inputs, out_dir)
    if not sources:
        raise PhotosUsageError(f"no input photos found in {', '.join(map(str, inputs))} "
                               f"(folders are searched for {', '.join(sorted(IMAGE_SUFFIXES))})")
    exts = {source.name: output_ext(source.path, ext) for source in sources}
    _check_outputs(out_dir, sources, exts, overwrite)
    weights_path, weights_record = _resolve_weights(weights, progress)
    restorer = _load_restorer(weights_path, batch_size, device)
    out_size = int(restorer.description["arch"]["out_size"])
    landmarker = _landmarker(detector)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _outdir_lock(out_dir), tqdm(total=len(sources), desc="restore photos", unit="photo",
                                    disable=not progress) as bar:
        # again under the lock: a concurrent run may have written them
        _check_outputs(out_dir, sources, exts, overwrite)
        state = _PhotoRun(out_dir, restorer, out_size, landmarker, upscale=upscale,
                          only_center_face=only_center_face, min_face_size=min_face_size, max_pixels=max_pixels,
                          batch_size=batch_size, too_large_ratio=too_large_ratio, force=force,
                          input_paths={s.path.resolve() for s in sources}, progress=bar, exts=exts,
                          quality=quality, weights_sha256=str(weights_record.get("sha256", "")))
        for source in sources:
            state.add(source)
        state.flush()
    results = [state.results[source.name] for source in sources]
    elapsed = time.perf_counter() - started
    failed = sum(result.status == STATUS_FAILED for result in results)
    run_info = {"weights": str(weights if weights is not None else DEFAULT_WEIGHTS),
                "weights_file": weights_record, "model": restorer.description["arch"], "device":
                restorer.description["device"], "detector": detector, "upscale": upscale,
                "min_face_size": min_face_size, "max_pixels": max_pixels, "batch_size": batch_size,
                "only_center_face": only_center_face, "too_large_ratio": too_large_ratio, "force": force,
                "photos": len(results), "failed": failed,
                "faces_found": sum(r.faces_found for r in results),
                "faces_restored": sum(r.faces_restored for r in results), "seconds": round(elapsed, 2),
                "ext": ext, "quality": quality,
                "provenance": {"note": provenance.LABEL_NOTE, "format": "XMP",
                               "digital_source_type": provenance.DIGITAL_SOURCE_TYPE,
                               "creator_tool": provenance.creator_tool()}}
    summary = {"run": run_info, "photos": [{c: asdict(r)[c] for c in (*SUMMARY_COLUMNS, "notes", "crops")}
                                           for r in results]}
    write_json_atomic(out_dir / SUMMARY_JSON, summary)
    write_csv_atomic(out_dir / SUMMARY_CSV, SUMMARY_COLUMNS, [result.row() for result in results])
    write_text_atomic(out_dir / INDEX_HTML, render_index(results, run_info))
    for result in results:
        if result.status == STATUS_FAILED:
            log.warning("restore: %s: failed: %s", result.input, result.reason)
    print(f"restore: {len(results)} photos ({len(results) - failed} ok, {failed} failed), "
          f"{run_info['faces_restored']} of {run_info['faces_found']} faces restored in {elapsed:.1f} s -> {out_dir}")
    return summary


def exit_code(summary: dict) -> int:
    """0 when every photo succeeded ('no face' and skipped tiny faces are successes), 1 when some failed."""
    return 1 if any(row["status"] == STATUS_FAILED for row in summary["photos"]) else 0
