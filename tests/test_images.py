"""Image decoding/normalisation: every odd input becomes upright 8-bit RGB or a named rejection."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import _dlfp_test_prereq as prereq  # tests/_prereq.py, registered by conftest.py
import numpy as np
import pytest
from _dlfp_test_faces import FACES  # tests/_faces.py, registered by conftest.py
from PIL import Image

from dlfp.io.images import (
    ImageRejected,
    decode_image,
    decode_image_bytes,
    decode_png_bytes,
    encode_jpeg,
    encode_png,
)


# ------------------------------------------------------------------------------------------- helpers
def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_16bit_rgb(values: np.ndarray) -> bytes:
    """Pillow cannot write 16-bit RGB PNGs, so build one by hand."""
    height, width, _ = values.shape
    raw = b"".join(b"\x00" + values[row].astype(">u2").tobytes() for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    chunks = _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def _with_header_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrite IHDR (with a valid CRC) so the header claims a size the pixel data does not have."""
    ihdr = bytearray(png[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    return png[:8] + _chunk(b"IHDR", bytes(ihdr)) + png[33:]


def _gradient(height: int = 32, width: int = 48) -> np.ndarray:
    rows, cols = np.meshgrid(np.arange(height, dtype=np.uint16), np.arange(width, dtype=np.uint16),
                             indexing="ij")
    return np.stack([rows * 7 % 256, cols * 5 % 256, (rows + cols) % 256], axis=2).astype(np.uint8)


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------- rejections
def test_zero_byte_file_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "empty.png", b"")
    with pytest.raises(ImageRejected) as caught:
        decode_image(path)
    assert caught.value.reason == "empty file (0 bytes)"
    assert str(path) in str(caught.value)


def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    path = _write(tmp_path, "notes.png", b"this is a text file, not a picture\n")
    with pytest.raises(ImageRejected, match="not an image") as caught:
        decode_image(path)
    assert "text" in caught.value.reason


def test_html_is_named_as_html(tmp_path: Path) -> None:
    path = _write(tmp_path, "page.jpg", b"<!DOCTYPE html><html><body>Quota exceeded</body></html>")
    with pytest.raises(ImageRejected, match="HTML page"):
        decode_image(path)


def test_corrupt_png_crc_is_rejected(tmp_path: Path) -> None:
    png = bytearray(_png_bytes(Image.fromarray(_gradient())))
    idat = png.index(b"IDAT")
    png[idat + 10] ^= 0xFF  # a flipped bit inside the compressed data: the chunk CRC no longer matches
    with pytest.raises(ImageRejected, match="truncated or corrupt"):
        decode_image(_write(tmp_path, "corrupt.png", bytes(png)))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_rejected(tmp_path: Path, fmt: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_gradient(128, 128)).save(buffer, format=fmt)
    data = buffer.getvalue()
    with pytest.raises(ImageRejected, match="truncated or corrupt"):
        decode_image(_write(tmp_path, f"cut.{fmt.lower()}", data[: len(data) // 2]))


def test_huge_header_is_rejected_before_decoding(tmp_path: Path) -> None:
    """The header claims 12000x12000 but holds 48x32 pixels: decoding would fail as truncated, so a
    'too large' reason proves the size check ran on the header alone."""
    png = _with_header_size(_png_bytes(Image.fromarray(_gradient())), 12000, 12000)
    with pytest.raises(ImageRejected) as caught:
        decode_image(_write(tmp_path, "huge.png", png), max_pixels=1_000_000)
    assert caught.value.reason.startswith("too large: 12000x12000")
    assert "limit 1000000" in caught.value.reason


def test_decompression_bomb_is_rejected(tmp_path: Path) -> None:
    png = _with_header_size(_png_bytes(Image.fromarray(_gradient())), 20000, 20000)
    with pytest.raises(ImageRejected) as caught:
        decode_image(_write(tmp_path, "bomb.png", png))
    assert caught.value.reason.startswith("too large")
    assert "100000000" in caught.value.reason


def test_too_small_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "tiny.png", _png_bytes(Image.new("RGB", (8, 8), "red")))
    with pytest.raises(ImageRejected, match="too small: 8x8"):
        decode_image(path, min_side=16)


def test_load_truncated_images_must_stay_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image_bytes(_png_bytes(Image.fromarray(_gradient())))


# -------------------------------------------------------------------------------------- conversions
def _assert_rgb8(decoded_rgb: np.ndarray, height: int, width: int) -> None:
    assert decoded_rgb.dtype == np.uint8
    assert decoded_rgb.shape == (height, width, 3)


def test_rgb_png_round_trips_exactly() -> None:
    pixels = _gradient()
    decoded = decode_image_bytes(_png_bytes(Image.fromarray(pixels)))
    np.testing.assert_array_equal(decoded.rgb, pixels)
    assert decoded.notes == ()


def test_greyscale_becomes_three_equal_channels() -> None:
    grey = _gradient()[:, :, 0]
    decoded = decode_image_bytes(_png_bytes(Image.fromarray(grey, mode="L")))
    _assert_rgb8(decoded.rgb, *grey.shape)
    for channel in range(3):
        np.testing.assert_array_equal(decoded.rgb[:, :, channel], grey)
    assert "greyscale" in decoded.note


def test_one_bit_image() -> None:
    image = Image.fromarray(_gradient()[:, :, 1]).convert("1")
    decoded = decode_image_bytes(_png_bytes(image))
    assert set(np.unique(decoded.rgb)) <= {0, 255}


def test_palette_image_keeps_colours() -> None:
    pixels = _gradient()
    palette_image = Image.fromarray(pixels).quantize(colors=16)
    decoded = decode_image_bytes(_png_bytes(palette_image))
    np.testing.assert_array_equal(decoded.rgb, np.asarray(palette_image.convert("RGB")))
    assert "palette" in decoded.note


def test_palette_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([0, 0, 0] + [255, 0, 0] * 255)
    image.info["transparency"] = 0
    decoded = decode_image_bytes(_png_bytes(image, transparency=0))
    assert decoded.rgb[0, 0].tolist() == [255, 255, 255]


def test_rgba_is_composited_on_white() -> None:
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:10, :, 3] = 128  # half transparent top
    rgba[10:, :, 3] = 255  # opaque bottom
    decoded = decode_image_bytes(_png_bytes(Image.fromarray(rgba, mode="RGBA")))
    assert decoded.rgb[0, 0].tolist() == [255, 127, 127]
    assert decoded.rgb[15, 0].tolist() == [255, 0, 0]
    assert "alpha composited on white" in decoded.note


def test_la_is_composited_on_white() -> None:
    la = np.zeros((20, 20, 2), np.uint8)
    la[..., 1] = 0  # fully transparent black
    decoded = decode_image_bytes(_png_bytes(Image.fromarray(la, mode="LA")))
    assert decoded.rgb.min() == 255


def test_cmyk_jpeg_is_converted() -> None:
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    buffer = io.BytesIO()
    cmyk.save(buffer, format="JPEG", quality=95)
    decoded = decode_image_bytes(buffer.getvalue())
    _assert_rgb8(decoded.rgb, 32, 32)
    red, green, blue = decoded.rgb[16, 16].tolist()
    assert red > 240 and green < 15 and blue < 15
    assert "CMYK" in decoded.note


def test_16bit_grey_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 255, 257, 32768, 65535, 1000]], dtype=np.uint16).repeat(16, axis=0)
    values = np.tile(values, (1, 3))
    decoded = decode_image_bytes(_png_bytes(Image.fromarray(values)))
    row = decoded.rgb[0, :6, 0].tolist()
    assert row == [0, 1, 1, 128, 255, 4]  # round(v * 255 / 65535); clipping would give [0, 255, 255, ...]
    assert "16-bit" in decoded.note


def test_16bit_rgb_png_is_scaled_not_clipped() -> None:
    values = np.zeros((16, 16, 3), np.uint16)
    values[..., 0] = 65535
    values[..., 1] = 32768
    values[..., 2] = 1000
    decoded = decode_image_bytes(_png_16bit_rgb(values))
    assert decoded.rgb[0, 0].tolist() == [255, 128, 3]  # clipping would give [255, 255, 255]
    assert "16-bit" in decoded.note


def test_int32_and_float_modes() -> None:
    ints = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.int32)  # 0..61380: a 16-bit range
    decoded = decode_image_bytes(_tiff_bytes(Image.fromarray(ints, mode="I")))
    assert decoded.rgb[-1, -1, 0] == round(61380 * 255 / 65535)
    floats = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    decoded = decode_image_bytes(_tiff_bytes(Image.fromarray(floats, mode="F")))
    assert decoded.rgb[0, 0, 0] == 0 and decoded.rgb[-1, -1, 0] == 255


def _tiff_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_6_is_applied(fmt: str) -> None:
    """Orientation 6 means 'rotate 90 degrees clockwise to view': a wide file becomes a tall image."""
    pixels = np.zeros((20, 40, 3), np.uint8)  # 20 high, 40 wide
    pixels[:10, :10] = (255, 0, 0)  # red block at the stored top-left
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, exif=exif.tobytes(), **({"quality": 98} if fmt == "JPEG" else {}))
    decoded = decode_image_bytes(buffer.getvalue())
    assert decoded.rgb.shape == (40, 20, 3)
    assert decoded.rgb[2, 17, 0] > 200 and decoded.rgb[2, 17, 1] < 60  # stored top-left is now top-right
    assert decoded.rgb[2, 2, 0] < 60
    assert "EXIF orientation 6" in decoded.note


# ------------------------------------------------------------------------------------------ encoding
def test_encode_png_is_deterministic_and_lossless() -> None:
    pixels = _gradient(64, 80)
    first, second = encode_png(pixels), encode_png(pixels.copy())
    assert first == second
    np.testing.assert_array_equal(decode_png_bytes(first), pixels)


def test_encode_png_refuses_wrong_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        encode_png(np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize(("encoder", "quality"), [("pillow", 90), ("pillow", 88), ("opencv", 88)])
def test_encode_jpeg_gives_each_callers_former_bytes(encoder: str, quality: int) -> None:
    """The one JPEG encoder writes what the copies it replaced wrote: Pillow's save (evaluation page assets,
    training grids, data-page thumbnails) or OpenCV's imencode (bias gallery), at the caller's quality."""
    import cv2

    pixels = _gradient(48, 40)
    if encoder == "pillow":
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        former = buffer.getvalue()
    else:
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        former = encoded.tobytes()
    assert encode_jpeg(pixels, quality, encoder=encoder) == former
    assert np.abs(decode_png_bytes(former).astype(int) - pixels).mean() < 4  # a JPEG of the same pixels


def test_encode_jpeg_refuses_unknown_encoder_and_alpha() -> None:
    with pytest.raises(ValueError, match="unknown JPEG encoder 'gif'"):
        encode_jpeg(_gradient(8, 8), 90, encoder="gif")
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        encode_jpeg(np.zeros((8, 8, 4), np.uint8), 90)


@prereq.needs(FACES.is_dir(), "shared faces not present")
def test_real_faces_decode() -> None:
    for path in sorted(FACES.glob("ffhq256_0000*.jpg"))[:3]:
        decoded = decode_image(path)
        _assert_rgb8(decoded.rgb, 256, 256)
