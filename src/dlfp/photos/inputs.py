"""Own photos, the input side: which files a run reads, the names their outputs get, decoding with EXIF
rotation, alpha and ICC kept aside, the output size limit, and the checks of the command's option values.

Every problem with one photo becomes ImageRejected (its status in the summary); a problem with the command line
as a whole is PhotosUsageError (exit code 2). A library: imports dlfp.io only.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps

from dlfp.io.images import OUTPUT_FORMATS, ImageRejected, decode_image_bytes
from dlfp.photos.defaults import DEFAULT_QUALITY

log = logging.getLogger(__name__)

MAX_UPSCALE = 8
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
OUTPUT_EXTS = ("auto", *OUTPUT_FORMATS)
AUTO_EXT_OF_FORMAT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # any other input format -> png
MAX_NAME_BYTES = 200              # file names stay under the usual 255-byte limit with suffixes added


class PhotosUsageError(ValueError):
    """The command line cannot work as given (bad option value, OUTDIR a file, outputs exist): exit code 2."""


class OutputExistsError(PhotosUsageError):
    """Outputs of this run already exist and `overwrite` is off."""


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


def check_options(upscale: int, batch_size: int, min_face_size: int, max_pixels: int, device: str,
                   detector: str, too_large_ratio: float, ext: str = "auto", quality: int = DEFAULT_QUALITY) -> None:
    """PhotosUsageError naming the option when a value cannot work (checked before any photo is read)."""
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
