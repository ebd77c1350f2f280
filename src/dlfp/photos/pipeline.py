"""`dlfp restore INPUT... -o OUTDIR`: restore every face in a user's own photos and paste it back.

One module of about 460 lines on purpose: a third of it is this docstring, the contract of the outputs and
statuses, kept beside the run loop it describes.

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
- Every image written carries an XMP provenance label (dlfp.photos.provenance): IPTC digital source type
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

The run itself lives here (batching faces across photos, the output folder's checks and lock, the weights); its
parts are in dlfp.photos.inputs (files, decoding, option checks), .detection (faces to restore), dlfp.faces.geometry
(warp and paste-back), .summary (rows, statuses, summary.json/csv) and .html (index.html). Imports libraries
(dlfp.io, dlfp.faces, dlfp.restorers, dlfp.photos.*), never a stage, train/ or report/.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from dlfp.faces.geometry import (
    attach_alpha,
    crop_face,
    face_box,
    face_size,
    paste_face,
    resample,
    similarity_to_template,
)
from dlfp.faces.landmarks import Detector, FaceLandmarker, LandmarkError
from dlfp.io.atomic import open_lock_file, write_bytes_atomic, write_text_atomic
from dlfp.io.images import ImageRejected, encode_image
from dlfp.photos import provenance
from dlfp.photos.defaults import (  # defined once, torch-free, for cli.py too
    DEFAULT_BACKEND,
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_FACE_SIZE,
    DEFAULT_QUALITY,
    DEFAULT_TOO_LARGE_RATIO,
    DEFAULT_UPSCALE,
    DEFAULT_WEIGHTS,
)
from dlfp.photos.detection import detect_faces, landmarker_for, select_faces
from dlfp.photos.html import INDEX_HTML, render_index
from dlfp.photos.inputs import (
    IMAGE_SUFFIXES,
    DecodedPhoto,
    OutputExistsError,
    PhotoSource,
    PhotosUsageError,
    check_options,
    collect_inputs,
    decode_photo,
    output_ext,
)
from dlfp.photos.summary import STATUS_FAILED, SUMMARY_CSV, SUMMARY_JSON, PhotoResult, photo_status, write_summary

log = logging.getLogger(__name__)

OFFICIAL_WEIGHTS_NAME = "GFPGANv1.4.pth"
RESTORED_DIR, FACES_DIR = "restored", "faces"
LOCK_NAME = ".dlfp-restore.lock"
CROP_GLOB = "face_*_*.png"


class WeightsNotFoundError(RuntimeError):
    """No restoration weights at the given path; the message says where to put them."""


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
        result.status, result.reason = photo_status(result, self.min_face_size, self.out_size)

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
    from dlfp.photos import official_weights

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


def _load_restorer(weights: Path, batch_size: int, device: str, backend: str, weights_sha256: str | None):
    """The GFP-GAN restorer, or WeightsNotFoundError that says where the file goes.

    The network runs on `backend` (dlfp.inference) with torch's thread count, so both backends use the same cores.
    """
    import torch

    from dlfp.restorers import RestorerUnavailable, gfpgan_restorer

    try:
        return gfpgan_restorer(weights, None, batch_size=batch_size, device=device, backend=backend,
                               threads=torch.get_num_threads(), weights_sha256=weights_sha256)
    except RestorerUnavailable as error:
        raise WeightsNotFoundError(str(error)) from None


def run_photos(inputs: Sequence[Path | str], out_dir: Path | str, *, weights: Path | str | None = None,
               upscale: int = DEFAULT_UPSCALE, only_center_face: bool = False, detector: Detector = "hog",
               device: str = "auto", overwrite: bool = False, min_face_size: int = DEFAULT_MIN_FACE_SIZE,
               max_pixels: int = DEFAULT_MAX_PIXELS, batch_size: int = DEFAULT_BATCH_SIZE,
               too_large_ratio: float = DEFAULT_TOO_LARGE_RATIO, force: bool = False, progress: bool = True,
               ext: str = "auto", quality: int = DEFAULT_QUALITY, backend: str = DEFAULT_BACKEND) -> dict:
    """Restore every face in the input photos into out_dir; returns the summary (also summary.json).

    `weights`: a checkpoint path, or an official release name (gfpgan-v1.3, gfpgan-v1.4: downloaded once into
    $DLFP_CACHE/weights). Faces larger than `too_large_ratio` x the model's out_size (output px) are left as they
    are, with the reason, unless `force`. `ext` (auto|png|jpg|webp) and `quality` (JPEG/WebP, 1..100) choose the
    restored photos' format; every image written carries the XMP provenance label. `backend` (auto|torch|openvino,
    dlfp.inference) runs the network; summary.json and index.html record the one that really ran.

    Raises PhotosUsageError (bad options, outputs exist) and WeightsNotFoundError before any photo is touched;
    per-photo problems become that photo's status instead.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    check_options(upscale, batch_size, min_face_size, max_pixels, device, detector, too_large_ratio, ext, quality)
    from dlfp.inference import BACKENDS

    if backend not in BACKENDS:
        raise PhotosUsageError(f"unknown inference backend {backend!r}; choose from {', '.join(BACKENDS)}")
    _check_outdir_is_no_input(inputs, out_dir)
    sources = collect_inputs(inputs, out_dir)
    if not sources:
        raise PhotosUsageError(f"no input photos found in {', '.join(map(str, inputs))} "
                               f"(folders are searched for {', '.join(sorted(IMAGE_SUFFIXES))})")
    exts = {source.name: output_ext(source.path, ext) for source in sources}
    _check_outputs(out_dir, sources, exts, overwrite)
    weights_path, weights_record = _resolve_weights(weights, progress)
    restorer = _load_restorer(weights_path, batch_size, device, backend,
                              str(weights_record["sha256"]) if weights_record.get("sha256") else None)
    out_size = int(restorer.description["arch"]["out_size"])
    landmarker = landmarker_for(detector)
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
                restorer.description["device"], "backend_requested": backend,
                "backend": restorer.description["backend"], "backend_version": restorer.description["backend_version"],
                "detector": detector, "upscale": upscale,
                "min_face_size": min_face_size, "max_pixels": max_pixels, "batch_size": batch_size,
                "only_center_face": only_center_face, "too_large_ratio": too_large_ratio, "force": force,
                "photos": len(results), "failed": failed,
                "faces_found": sum(r.faces_found for r in results),
                "faces_restored": sum(r.faces_restored for r in results), "seconds": round(elapsed, 2),
                "ext": ext, "quality": quality,
                "provenance": {"note": provenance.LABEL_NOTE, "format": "XMP",
                               "digital_source_type": provenance.DIGITAL_SOURCE_TYPE,
                               "creator_tool": provenance.creator_tool()}}
    summary = write_summary(out_dir, results, run_info)
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
