"""The one place that decodes images: any input becomes 8-bit RGB numpy (H, W, 3) uint8, or a typed rejection.

Why one place: EXIF rotation, CMYK, 16-bit and alpha each silently change pixels when handled ad hoc, and a
truncated file that decodes "fine" with grey bands poisons a training set without anyone noticing.

Conventions (documented so later stages can rely on them):
- EXIF orientation is applied, so the array is upright as a viewer shows it.
- Alpha (RGBA, LA, PA, palette transparency) is composited on white, then dropped.
- 16-bit greyscale is scaled v * 255 / 65535 (rounded), never clipped. Pillow decodes 16-bit RGB PNGs to
  8 bits itself by keeping the high byte (floor(v / 256), at most one level from exact scaling); noted.
- An embedded ICC profile is converted to sRGB when Pillow's LittleCMS can read it.
- Truncated or corrupt files are rejected: PIL's LOAD_TRUNCATED_IMAGES must stay False.
- The pixel count is checked from the header before any pixel is decoded.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, PngImagePlugin, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 100_000_000
MAX_8BIT = 255.0  # the top of the 8-bit range, as a float for scaling uint8 pixels to [0, 1] or [-1, 1]
# The only formats Pillow may open: what acquire and `dlfp restore` accept. Never EPS/PS (Pillow hands those to
# Ghostscript), nor any other plugin Pillow happens to have.
DECODE_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")
DEFAULT_MIN_SIDE = 16
# Fixed, so the same pixels always give the same PNG bytes. Level 1: on 1024 px faces about 3x faster to
# encode than level 6 for files about 15% larger; these PNGs are intermediate artifacts.
PNG_COMPRESS_LEVEL = 1
_EXIF_ORIENTATION_TAG = 0x0112
_MAX_16BIT = 65535
_SNIFF_BYTES = 512
_MIN_MAGIC_BYTES = 2
_MAGIC = (("PNG", b"\x89PNG\r\n\x1a\n"), ("JPEG", b"\xff\xd8\xff"), ("GIF", b"GIF8"), ("TIFF", b"II*\x00"),
          ("TIFF", b"MM\x00*"), ("WebP", b"RIFF"), ("BMP", b"BM"))


class ImageRejected(ValueError):
    """A file that cannot become a dataset image; `reason` is short enough for a rejects.csv cell."""

    def __init__(self, source: str | Path, reason: str) -> None:
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


@dataclass(frozen=True)
class DecodedImage:
    """Normalised pixels plus what was done to get them (for the manifest's note column)."""

    rgb: np.ndarray
    notes: tuple[str, ...] = ()

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def note(self) -> str:
        return "; ".join(self.notes)


# ------------------------------------------------------------------------------------------ decoding
def decode_image(path: Path | str, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_side: int = DEFAULT_MIN_SIDE) -> DecodedImage:
    """Decode a file on disk; see decode_image_bytes."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageRejected(path, f"unreadable: {error.strerror or error}") from None
    return decode_image_bytes(data, source=path, max_pixels=max_pixels, min_side=min_side)


def load_rgb(path: Path | str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Shortcut for stages that only need the pixels."""
    return decode_image(path, max_pixels=max_pixels).rgb


def decode_image_bytes(data: bytes, *, source: str | Path = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS,
                       min_side: int = DEFAULT_MIN_SIDE) -> DecodedImage:
    """Decode encoded image bytes to upright 8-bit RGB, or raise ImageRejected with the reason."""
    _require_strict_loading()
    if not data:
        raise ImageRejected(source, "empty file (0 bytes)")
    image = _open_checked(data, source, max_pixels)
    notes: list[str] = []
    sixteen_bit_rgb = image.mode in ("RGB", "RGBA") and _tile_is_16bit(image)
    try:
        _verify_structure(data)
        image.load()
        image = _first_frame(image, notes)
        image = _apply_orientation(image, notes)
        if sixteen_bit_rgb:
            notes.append(f"16-bit {image.mode} scaled to 8-bit by Pillow (high byte)")
        rgb = _to_rgb_array(image, notes)
    except ImageRejected:
        raise
    except Image.DecompressionBombError:
        raise ImageRejected(source, _bomb_reason(max_pixels)) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as error:
        raise ImageRejected(source, f"truncated or corrupt: {_short(error)}") from None
    height, width = rgb.shape[:2]
    if min(height, width) < min_side:
        raise ImageRejected(source, f"too small: {width}x{height}, need at least {min_side} px per side")
    return DecodedImage(np.ascontiguousarray(rgb), tuple(notes))


def _require_strict_loading() -> None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True somewhere in this process; "
                           "truncated images would be accepted silently. Leave it False.")


def _open_checked(data: bytes, source: str | Path, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and refuse oversized images before decoding any pixel."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=DECODE_FORMATS)
    except Image.DecompressionBombError:
        raise ImageRejected(source, _bomb_reason(max_pixels)) from None
    except UnidentifiedImageError:
        known = _known_format(data)
        if known:
            reason = f"truncated or corrupt: starts like {known} but has no readable header"
            raise ImageRejected(source, reason) from None
        raise ImageRejected(source, f"not an image ({_describe_non_image(data)})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageRejected(source, f"truncated or corrupt header: {_short(error)}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(source, f"too large: {width}x{height} = {width * height} pixels, "
                                    f"limit {max_pixels} (not decoded)")
    if width <= 0 or height <= 0:
        raise ImageRejected(source, f"invalid size {width}x{height}")
    return image


def _bomb_reason(max_pixels: int) -> str:
    pil_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return (f"too large: over Pillow's decompression-bomb limit of {pil_limit} pixels "
            f"(dataset limit {max_pixels}; not decoded)")


def _verify_structure(data: bytes) -> None:
    """Checksums that load() skips (PNG chunk CRCs): Pillow's verify() on a second lazy open."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        probe = Image.open(io.BytesIO(data), formats=DECODE_FORMATS)
        probe.verify()


def _known_format(data: bytes) -> str | None:
    """The format whose signature the data starts with (or is a cut-off start of), if any."""
    for name, magic in _MAGIC:
        probe = min(len(magic), len(data))
        if data[:probe] == magic[:probe] and probe >= _MIN_MAGIC_BYTES:
            return name
    return None


def _describe_non_image(data: bytes) -> str:
    head = data[:_SNIFF_BYTES].lstrip().lower()
    if head.startswith((b"%!ps", b"\xc5\xd0\xd3\xc6")):
        return f"PostScript/EPS, not one of the accepted formats {', '.join(DECODE_FORMATS)}"
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "an HTML page"
    if head.startswith((b"{", b"[")):
        return "looks like JSON text"
    try:
        data[:_SNIFF_BYTES].decode("utf-8")
    except UnicodeDecodeError:
        return "unrecognised binary format"
    return "looks like text"


def _short(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:160]


def _first_frame(image: Image.Image, notes: list[str]) -> Image.Image:
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        image.seek(0)
        notes.append(f"first of {frames} frames")
    return image


def _apply_orientation(image: Image.Image, notes: list[str]) -> Image.Image:
    orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    if orientation in (None, 1):
        return image
    rotated = ImageOps.exif_transpose(image)
    notes.append(f"EXIF orientation {orientation} applied")
    return rotated if rotated is not None else image


# ------------------------------------------------------------------------------------ mode conversion
def _to_rgb_array(image: Image.Image, notes: list[str]) -> np.ndarray:
    image = _to_srgb(image, notes)
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        notes.append(f"16-bit grey ({mode}) scaled to 8-bit")
        return _grey_to_rgb(_scale_16bit(np.asarray(image)))
    if mode == "I":
        return _grey_to_rgb(_int32_to_8bit(np.asarray(image), notes))
    if mode == "F":
        return _grey_to_rgb(_float_to_8bit(np.asarray(image), notes))
    if mode in ("1", "L"):
        if mode == "1":
            notes.append("converted from 1-bit")
        else:
            notes.append("converted from greyscale")
        return _grey_to_rgb(np.asarray(image.convert("L"), dtype=np.uint8))
    if mode == "P":
        has_alpha = "transparency" in image.info or image.palette.mode == "RGBA"
        if has_alpha:
            return _composite_on_white(image.convert("RGBA"), notes, "palette")
        notes.append("converted from palette")
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_on_white(image.convert("RGBA"), notes, mode)
    if mode == "CMYK":
        notes.append("converted from CMYK")
    else:
        notes.append(f"converted from {mode}")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _to_srgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """Apply an embedded ICC profile so that 'RGB' means sRGB; unreadable profiles are noted and ignored."""
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "RGBA", "CMYK", "L"):
        return image
    try:
        source_profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = ImageCms.getProfileDescription(source_profile).strip()
        if "srgb" in description.lower() and image.mode in ("RGB", "RGBA"):
            return image
        out_mode = "RGBA" if image.mode == "RGBA" else "RGB"
        converted = ImageCms.profileToProfile(image, source_profile, ImageCms.createProfile("sRGB"),
                                              outputMode=out_mode)
    except (ImageCms.PyCMSError, OSError, ValueError) as error:
        notes.append(f"ICC profile ignored ({_short(error)})")
        return image
    if converted is None:
        return image
    if image.mode == "CMYK":
        notes.append("converted from CMYK")
    notes.append(f"ICC profile '{description[:40]}' converted to sRGB")
    return converted


def _tile_is_16bit(image: Image.Image) -> bool:
    """Before load(): Pillow's raw decoder mode says whether the file stored 16 bits per channel."""
    return any(";16" in str(getattr(entry, "args", entry)) for entry in (image.tile or []))


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    wide = values.astype(np.uint32)
    return ((wide * 255 + _MAX_16BIT // 2) // _MAX_16BIT).astype(np.uint8)


def _int32_to_8bit(values: np.ndarray, notes: list[str]) -> np.ndarray:
    low, high = int(values.min()), int(values.max())
    if low >= 0 and high <= _MAX_16BIT:
        notes.append("32-bit integer grey read as 16-bit and scaled to 8-bit")
        return _scale_16bit(values)
    notes.append(f"32-bit integer grey stretched from [{low}, {high}] to 8-bit")
    return _stretch(values.astype(np.float64), low, high)


def _float_to_8bit(values: np.ndarray, notes: list[str]) -> np.ndarray:
    finite = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(finite.min()), float(finite.max())
    if low >= 0.0 and high <= 1.0:
        notes.append("float grey in [0, 1] scaled to 8-bit")
        return np.rint(finite * 255.0).astype(np.uint8)
    notes.append(f"float grey stretched from [{low:g}, {high:g}] to 8-bit")
    return _stretch(finite, low, high)


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).clip(0, 255).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def _composite_on_white(rgba: Image.Image, notes: list[str], mode: str) -> np.ndarray:
    pixels = np.asarray(rgba, dtype=np.uint8)
    alpha = pixels[:, :, 3:4].astype(np.uint16)
    if int(alpha.min()) == 255:
        notes.append(f"converted from {mode} (opaque alpha dropped)")
        return np.ascontiguousarray(pixels[:, :, :3])
    notes.append(f"converted from {mode}: alpha composited on white")
    colour = pixels[:, :, :3].astype(np.uint16)
    blended = (colour * alpha + 255 * (255 - alpha) + 127) // 255
    return blended.astype(np.uint8)


# ------------------------------------------------------------------------------------------ encoding
def encode_png(rgb: np.ndarray) -> bytes:
    """Deterministic PNG bytes (fixed compression, no metadata chunks): same pixels give the same bytes."""
    array = np.asarray(rgb)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"encode_png expects (H, W, 3) uint8, got {array.shape} {array.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(
        buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buffer.getvalue()


def decode_png_bytes(data: bytes, *, source: str | Path = "<bytes>") -> np.ndarray:
    """Inverse of encode_png (accepts any image bytes; returns 8-bit RGB)."""
    return decode_image_bytes(data, source=source, min_side=1).rgb


# Output formats of `dlfp restore` (the Pillow format name of each suffix).
OUTPUT_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
DEFAULT_QUALITY = 95
_PNG_XMP_KEYWORD = "XML:com.adobe.xmp"  # the iTXt keyword XMP readers look for (XMP spec part 3, PNG)


def encode_image(pixels: np.ndarray, ext: str, *, quality: int = DEFAULT_QUALITY, icc_profile: bytes | None = None,
                 xmp: bytes | None = None) -> bytes:
    """RGB or RGBA uint8 pixels as png/jpg/webp bytes, with an ICC profile and an XMP packet when given.

    Deterministic (fixed settings, no timestamps). JPEG has no alpha: callers composite RGBA first."""
    array = np.ascontiguousarray(np.asarray(pixels))
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"encode_image expects (H, W, 3|4) uint8, got {array.shape} {array.dtype}")
    if ext not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {ext!r} (one of {', '.join(OUTPUT_FORMATS)})")
    if ext == "jpg" and array.shape[2] == 4:
        raise ValueError("JPEG cannot carry alpha: composite the pixels first")
    options: dict[str, object] = {}
    if icc_profile:
        options["icc_profile"] = icc_profile
    if ext == "png":
        options.update(compress_level=PNG_COMPRESS_LEVEL, optimize=False)
        if xmp is not None:
            info = PngImagePlugin.PngInfo()
            info.add_itxt(_PNG_XMP_KEYWORD, xmp.decode("utf-8"))
            options["pnginfo"] = info
    else:
        options["quality"] = quality
        if xmp is not None:
            options["xmp"] = xmp  # JPEG: APP1 with the http://ns.adobe.com/xap/1.0/ header; WebP: the XMP chunk
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=OUTPUT_FORMATS[ext], **options)
    return buffer.getvalue()


JPEG_ENCODERS = ("pillow", "opencv")


def encode_jpeg(rgb: np.ndarray, quality: int, *, encoder: str = "pillow") -> bytes:
    """RGB uint8 (H, W, 3) as JPEG bytes at `quality`: the one JPEG encoder of the pages' images.

    `encoder` keeps each caller's bytes as they were: the bias gallery has always encoded with OpenCV, the other
    pages with Pillow (encode_image). Both use libjpeg-turbo's defaults (4:2:0, no Huffman optimisation) and gave
    the same bytes on the machines measured, but that is not promised across builds, so the choice is kept."""
    if encoder not in JPEG_ENCODERS:
        raise ValueError(f"unknown JPEG encoder {encoder!r} (one of {', '.join(JPEG_ENCODERS)})")
    array = np.asarray(rgb)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"encode_jpeg expects (H, W, 3) uint8, got {array.shape} {array.dtype}")
    if encoder == "pillow":
        return encode_image(array, "jpg", quality=quality)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(array, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return encoded.tobytes()


# ---------------------------------------------------------------------------------------- resampling
def resize_for_model(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (size, size, 3): area averaging when shrinking (no aliasing), bilinear when growing.

    The resampling a model's inputs get, in training and at restoration alike (dlfp.restorers), so both see the
    same pixels."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    interpolation = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)
