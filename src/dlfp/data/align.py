"""The align stage: one FFHQ-aligned face per input image, with its 68 landmarks and component boxes.

Input (the acquire stage's folder): images/<id>.png, manifest.csv (id, source, licence, ffhq_id, ...),
rejects.csv, receipt.json. Output: images/<id>.png at data.size, meta.jsonl (one JSON object per kept image,
sorted by id), rejects.csv (cumulative: acquire's rejects carried over with stage "acquire", then this
stage's), receipt.json.

Decisions, in one place:
- Faces are counted only when their detection box side is >= align.min_face_size (input px). Smaller faces
  (background crowds) are ignored; an image whose faces are all smaller is rejected as "face too small",
  one with several large faces as "several faces".
- An image is already aligned when it is square and every corner of the FFHQ quad computed from its own
  landmarks lies within align.aligned_tolerance * side of the matching image corner (this bounds centre
  offset, size error and rotation at once). Such images are only resized (Lanczos); never decided by name.
- Other images get NVlabs' FFHQ alignment (shrink, crop with border, reflect-pad with a blurred border, quad
  to square rendered at 4x and box-downsampled). Landmarks are not re-detected on the output: the original
  points are mapped through the same (exact) similarity transform, which is cheaper and has no detector noise.
- All coordinates are pixel-centre based ((0, 0) = centre of the top-left pixel), in output pixels, except
  face_box which is the detection box in input pixels.
- Output bytes do not depend on the number of workers: each image is processed independently and every
  file is written in sorted id order.
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from dlfp.data.landmarks import (
    Detector,
    FaceBox,
    FaceLandmarker,
    LandmarkError,
    Quad,
    check_landmarks,
    component_boxes,
    ffhq_quad,
)
from dlfp.io.atomic import staged_output, write_bytes_atomic, write_csv_atomic, write_text_atomic
from dlfp.io.hashing import file_digest
from dlfp.io.images import ImageRejected, decode_image, encode_png
from dlfp.io.receipt import write_receipt
from dlfp.params import Params

STAGE = "align"
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

LANDMARK_DECIMALS = 2
REJECTS_HEADER = ("id", "source", "stage", "reason", "detail")
META_NAME = "meta.jsonl"
REJECTS_NAME = "rejects.csv"
MANIFEST_NAME = "manifest.csv"
IMAGES_DIR = "images"
CHUNKSIZE = 4


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


def face_record(face: AlignedFace) -> dict:
    """The geometry part of a meta.jsonl line, rounded so the text is stable."""
    return {
        "alignment": face.alignment,
        "landmarks": [[round(float(x), LANDMARK_DECIMALS), round(float(y), LANDMARK_DECIMALS)]
                      for x, y in face.landmarks],
        "boxes": {name: [round(v, LANDMARK_DECIMALS) for v in box] for name, box in face.boxes.items()},
        "face_box": face.face_box.as_list(),
        "detector": face.face_box.detector,
    }


# -------------------------------------------------------------------------------- worker processes
@dataclass(frozen=True)
class AlignConfig:
    """Plain values a worker needs (picklable; no params object crosses the process boundary)."""

    in_images: str
    out_images: str
    size: int
    detector: Detector
    upsample: int
    cnn_fallback: bool
    min_face_size: int
    tolerance: float


_WORKER: dict[str, object] = {}


def _init_worker(config: AlignConfig, single_thread: bool) -> None:
    """Load dlib's models once per worker process.

    A failure is kept and raised by the first task instead: an initializer that raises makes
    multiprocessing.Pool respawn workers forever.
    """
    if single_thread:
        cv2.setNumThreads(1)   # two workers on two cores: no oversubscription
    _WORKER["config"] = config
    try:
        _WORKER["landmarker"] = FaceLandmarker(config.detector, config.upsample, config.cnn_fallback)
    except Exception as error:  # noqa: BLE001 - re-raised in _process with its message
        _WORKER["error"] = error


def _process(image_id: str) -> dict:
    """Align one image: write its PNG, return its record or its rejection (never raises for bad inputs)."""
    if "error" in _WORKER:
        raise RuntimeError(f"align worker could not load the dlib models: {_WORKER['error']}")
    config: AlignConfig = _WORKER["config"]  # type: ignore[assignment]
    landmarker: FaceLandmarker = _WORKER["landmarker"]  # type: ignore[assignment]
    path = Path(config.in_images) / f"{image_id}.png"
    result: dict = {"id": image_id, "input_sha256": file_digest(path) if path.is_file() else None}
    try:
        rgb = decode_image(path).rgb
        face = align_image(rgb, landmarker, size=config.size, min_face_size=config.min_face_size,
                           tolerance=config.tolerance)
    except ImageRejected as error:
        return {**result, "reason": REJECT_UNREADABLE, "detail": error.reason}
    except FaceRejected as error:
        return {**result, "reason": error.reason, "detail": error.detail}
    write_bytes_atomic(Path(config.out_images) / f"{image_id}.png", encode_png(face.image))
    return {**result, "record": face_record(face)}


def _process_all(ids: list[str], config: AlignConfig, workers: int) -> Iterator[dict]:
    """Results in completion order (the caller sorts); one process per worker, models loaded once each."""
    if workers <= 1 or len(ids) <= 1:
        _init_worker(config, single_thread=False)
        try:
            yield from map(_process, ids)
        finally:
            _WORKER.clear()
        return
    context = multiprocessing.get_context("spawn")   # no fork of a threaded parent
    with context.Pool(workers, initializer=_init_worker, initargs=(config, True)) as pool:
        yield from pool.imap_unordered(_process, ids, chunksize=CHUNKSIZE)


# ----------------------------------------------------------------------------------- stage files
def read_manifest(in_dir: Path) -> list[dict[str, str]]:
    """The acquire manifest's rows, sorted by id."""
    path = in_dir / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; run `dlfp acquire` first (or pass --in)")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if rows and "id" not in rows[0]:
        raise ValueError(f"{path}: manifest has no 'id' column")
    ids = [row["id"] for row in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate ids in the manifest")
    return sorted(rows, key=lambda row: row["id"])


def read_previous_rejects(in_dir: Path) -> list[list[str]]:
    """Earlier stages' rejects (acquire's), in REJECTS_HEADER order, so rejects.csv stays cumulative."""
    path = in_dir / REJECTS_NAME
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [[row.get("id") or "", row.get("source") or "", row.get("stage") or "acquire",
                 row.get("reason") or "", row.get("detail") or ""] for row in csv.DictReader(handle)]


def _ffhq_id(value: str | None) -> int | str | None:
    if value is None or value.strip() == "":
        return None
    return int(value) if value.strip().isdigit() else value.strip()


def _meta_line(row: dict[str, str], record: dict) -> str:
    meta = {"id": row["id"], "source": row.get("source") or None, "licence": row.get("licence") or None,
            "ffhq_id": _ffhq_id(row.get("ffhq_id")), **record}
    return json.dumps(meta, ensure_ascii=False, separators=(",", ":"))


def _images_digest(results: Iterable[dict]) -> str:
    digest = hashlib.sha256()
    for result in results:
        digest.update(f"{result['id']}\t{result['input_sha256']}\n".encode())
    return digest.hexdigest()


def _write_outputs(out: Path, rows: list[dict[str, str]], results: dict[str, dict],
                   previous_rejects: list[list[str]]) -> dict:
    """meta.jsonl and rejects.csv in sorted id order; returns the counts for the receipt."""
    meta_lines, rejects, alignments, reasons = [], [], Counter(), Counter()
    for row in rows:
        result = results[row["id"]]
        if "record" in result:
            meta_lines.append(_meta_line(row, result["record"]))
            alignments[result["record"]["alignment"]] += 1
        else:
            rejects.append([row["id"], row.get("source") or "", STAGE, result["reason"], result["detail"]])
            reasons[result["reason"]] += 1
    write_text_atomic(out / META_NAME, "".join(line + "\n" for line in meta_lines))
    write_csv_atomic(out / REJECTS_NAME, REJECTS_HEADER, previous_rejects + rejects)
    return {
        "input": len(rows),
        "kept": len(meta_lines),
        "passthrough": alignments[ALIGNMENT_PASSTHROUGH],
        "aligned": alignments[ALIGNMENT_FFHQ],
        "rejected": sum(reasons.values()),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "rejected_earlier": len(previous_rejects),
    }


def align_params_hash(params: Params) -> str:
    """Hash of what changes this stage's output: data.size and align.* except the worker count."""
    payload = {"size": params.data.size, "align": params.align.model_dump(mode="json", exclude={"workers"})}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def run(params: Params, in_dir: Path | str, out_dir: Path | str, workers: int | None = None) -> dict:
    """Stage entry: align every manifest image of `in_dir` into `out_dir`; returns the counts."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    workers = params.align.workers if workers is None else workers
    started = time.monotonic()
    rows = read_manifest(in_dir)
    previous_rejects = read_previous_rejects(in_dir)
    with staged_output(out_dir) as out:
        (out / IMAGES_DIR).mkdir()
        config = AlignConfig(in_images=str(in_dir / IMAGES_DIR), out_images=str(out / IMAGES_DIR),
                             size=params.data.size, detector=params.align.detector,
                             upsample=params.align.upsample, cnn_fallback=params.align.cnn_fallback,
                             min_face_size=params.align.min_face_size,
                             tolerance=params.align.aligned_tolerance)
        ids = [row["id"] for row in rows]
        results: dict[str, dict] = {}
        for result in tqdm(_process_all(ids, config, workers), total=len(ids), desc=STAGE, unit="img",
                           file=sys.stderr):
            results[result["id"]] = result
        counts = _write_outputs(out, rows, results, previous_rejects)
        inputs = {"manifest_sha256": file_digest(in_dir / MANIFEST_NAME),
                  "images_sha256": _images_digest(results[i] for i in ids)}
        write_receipt(out, stage=STAGE, params_hash=align_params_hash(params), seed=None,
                      counts=counts, inputs=inputs, packages=("dlib-bin", "opencv-python-headless", "pillow",
                                                              "numpy"),
                      extra={"size": params.data.size, "landmarks": "input landmarks mapped through the "
                             "alignment transform; pixel-centre coordinates of the output"})
    seconds = time.monotonic() - started
    print(f"align: {counts['kept']}/{counts['input']} kept ({counts['passthrough']} passthrough, "
          f"{counts['aligned']} aligned), {counts['rejected']} rejected {counts['rejected_by_reason']} "
          f"in {seconds:.1f} s -> {out_dir}", file=sys.stderr)
    return {**counts, "seconds": round(seconds, 2), "out_dir": str(out_dir)}
