"""`dlfp restore INPUT... -o OUTDIR`: own photos end to end, every bad-input case, exit codes, official weights.

Fast by construction: a random-init GFPGANv1Clean at 64 px (narrow 0.125) saved with save_official; the bad-input
cases are generated from one small real photo in tmp_path; real photos are read from ../shared/faces/wild.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import re
import shutil
import socket
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import _dlfp_test_prereq as prereq  # tests/_prereq.py, registered by conftest.py
import cv2
import dlib
import numpy as np
import pytest
import torch
from _dlfp_test_faces import WILD  # tests/_faces.py, registered by conftest.py
from PIL import Image, ImageCms

from dlfp import cli, inference
from dlfp.faces import geometry
from dlfp.faces.landmarks import template_5_points, template_points
from dlfp.io.images import load_rgb
from dlfp.models.checkpoints import read_state_dict, save_official
from dlfp.models.gfpgan import GFPGANv1Clean, release_model
from dlfp.photos import detection, official_weights, pipeline
from dlfp.photos.html import INDEX_HTML
from dlfp.photos.summary import (
    STATUS_FAILED,
    STATUS_NO_FACE,
    STATUS_OK,
    STATUS_RESOLUTION_TOO_LOW,
    STATUS_TOO_SMALL,
    SUMMARY_COLUMNS,
    SUMMARY_CSV,
    SUMMARY_JSON,
)

REPO = Path(__file__).resolve().parents[1]
MANIFEST_512 = REPO.parent / "shared" / "reference" / "state_dicts" / "gfpganv1clean_512.json"
PARAMS = ["--params", str(REPO / "params.yaml")]
TINY = dict(out_size=64, num_style_feat=64, channel_multiplier=1, num_mlp=2, narrow=0.125)
BASE_PHOTO = "dfdnet_test1.jpg"         # 262x181, one face (HOG box 75 px)
TINY_FACE_SCALE = 0.6                   # -> a 44 px face box: found by HOG, below MIN_FACE
MIN_FACE = 60
WILD_PHOTOS = ("codeformer_00.jpg", "facerec_two_people.jpg", "dfdnet_test3.jpg")
SCRIPT_DIR, SCRIPT_FILE = "<script>alert(1)<", "script>.png"  # together: <script>alert(1)</script>.png
SHELL_NAME = "my photo ü $(touch pwned); `id` 'q' \"d\" &.jpg"
HUGE_SIDE = 9000                        # 81 M pixels in the header: above the run's limit, below Pillow's bomb limit
RGBA_GRADIENT_FROM = 40


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dlib_hog_count(rgb: np.ndarray) -> int:
    """dlib's own detector, independent of dlfp's wrapper (same upsampling as the command)."""
    return len(dlib.get_frontal_face_detector()(np.ascontiguousarray(rgb), detection.HOG_UPSAMPLE))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_official(GFPGANv1Clean(**TINY), tmp_path_factory.mktemp("weights") / "tiny.pth")


def _png_with_header_size(width: int, height: int) -> bytes:
    """A small PNG whose IHDR claims width x height (CRC fixed): only the header says it is huge."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)


def _save(image: Image.Image, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


@pytest.fixture(scope="module")
def case_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every bad-input case of the issue, generated from one real photo; two INPUT folders (for a name clash)."""
    rgb = load_rgb(WILD / BASE_PHOTO)
    base = Image.fromarray(rgb)
    root = tmp_path_factory.mktemp("inputs")
    first, second = root / "first", root / "second"
    jpeg = (WILD / BASE_PHOTO).read_bytes()
    cases: dict[str, Path] = {}
    cases["plain"] = _save(base, first / "same.jpg", quality=95)
    cases["clash"] = _save(base, second / "same.jpg", quality=95)
    cases["zero"] = first / "zero.png"
    cases["zero"].write_bytes(b"")
    cases["truncated"] = first / "truncated.jpg"
    cases["truncated"].write_bytes(jpeg[: len(jpeg) // 2])
    png = io.BytesIO()
    base.save(png, format="PNG")
    corrupt = bytearray(png.getvalue())
    corrupt[len(corrupt) // 2] ^= 0xFF  # inside IDAT: the chunk CRC no longer matches
    cases["corrupt"] = first / "corrupt.png"
    cases["corrupt"].write_bytes(bytes(corrupt))
    cases["text"] = first / "notes.jpg"
    cases["text"].write_text("this is not a photo\n")
    cases["cmyk"] = _save(base.convert("CMYK"), first / "cmyk.jpg", quality=95)
    grey16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    cases["grey16"] = _save(Image.fromarray(grey16), first / "grey16.png")
    cases["rgb16"] = first / "rgb16.png"
    assert cv2.imwrite(str(cases["rgb16"]), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    cases["grey"] = _save(base.convert("L"), first / "grey.png")
    cases["palette"] = _save(base.convert("P", palette=Image.Palette.ADAPTIVE), first / "palette.png")
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :RGBA_GRADIENT_FROM] = np.linspace(0, 255, RGBA_GRADIENT_FROM, dtype=np.uint8)[None, :]
    cases["rgba"] = _save(Image.fromarray(np.dstack([rgb, alpha])), first / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": store the pixels turned 90 counter-clockwise
    cases["exif"] = _save(base.transpose(Image.Transpose.ROTATE_90), first / "exif_rotated.jpg", quality=95,
                          exif=exif.tobytes())
    cases["noface"] = _save(Image.fromarray(np.full((120, 160, 3), 90, np.uint8)), first / "wall.png")
    small = base.resize((round(base.width * TINY_FACE_SCALE), round(base.height * TINY_FACE_SCALE)),
                        Image.Resampling.LANCZOS)
    cases["tiny"] = _save(small, first / "tiny_face.png")
    cases["huge"] = first / "huge.png"
    cases["huge"].write_bytes(_png_with_header_size(HUGE_SIDE, HUGE_SIDE))
    cases["shell"] = _save(base, first / SHELL_NAME, quality=95)
    cases["script"] = _save(base, first / SCRIPT_DIR / SCRIPT_FILE)
    (first / "readme.txt").write_text("ignored: no image suffix\n")
    return cases


@pytest.fixture(scope="module")
def case_run(case_inputs: dict[str, Path], tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    """One run over both folders (one model load); hashes of every input before and after."""
    folders = [case_inputs["plain"].parent, case_inputs["clash"].parent]
    files = sorted(path for folder in folders for path in folder.rglob("*") if path.is_file())
    before = {path: _sha(path) for path in files}
    out = tmp_path_factory.mktemp("run") / "out"
    summary = pipeline.run_photos(folders, out, weights=tiny_weights, min_face_size=MIN_FACE, progress=False,
                                  max_pixels=pipeline.DEFAULT_MAX_PIXELS, batch_size=3, force=True)
    after = {path: _sha(path) for path in files}
    rows = {row["input"]: row for row in summary["photos"]}
    return summary, rows, out, before, after


def _row(case_run, case_inputs: dict[str, Path], case: str) -> dict:
    return case_run[1][str(case_inputs[case])]


# ------------------------------------------------------------------------------------ bad input cases
@pytest.mark.parametrize("case, reason", [
    ("zero", "empty file"), ("truncated", "truncated or corrupt"), ("corrupt", "truncated or corrupt"),
    ("text", "not an image"), ("huge", "too large")])
def test_unusable_files_fail_with_a_reason_and_no_output(case_run, case_inputs, case, reason):
    row = _row(case_run, case_inputs, case)
    assert row["status"] == STATUS_FAILED
    assert reason in row["reason"]
    assert row["output"] == ""
    assert not list((case_run[2] / pipeline.RESTORED_DIR).glob(f"{case_inputs[case].stem}.*"))


def test_huge_image_is_refused_from_its_header(case_run, case_inputs):
    row = _row(case_run, case_inputs, "huge")
    assert f"{HUGE_SIDE * HUGE_SIDE}" in row["reason"] and "not decoded" in row["reason"]


@pytest.mark.parametrize("case", ["plain", "clash", "cmyk", "grey16", "rgb16", "grey", "palette", "rgba", "exif",
                                  "shell", "script"])
def test_every_decodable_variant_restores_its_face(case_run, case_inputs, case):
    row = _row(case_run, case_inputs, case)
    assert row["status"] == STATUS_OK, row["reason"]
    assert row["faces_found"] == row["faces_restored"] == 1
    output = case_run[2] / row["output"]
    with Image.open(output) as image:
        assert image.size == (row["width"], row["height"])
    assert len(row["crops"]) == 1
    for crop in row["crops"][0].values():
        with Image.open(case_run[2] / crop) as image:
            assert image.size == (TINY["out_size"],) * 2


def test_exif_rotated_photo_is_searched_upright(case_run, case_inputs):
    stored = np.asarray(Image.open(case_inputs["exif"]).convert("RGB"))
    assert _dlib_hog_count(stored) == 0  # the stored (sideways) pixels show no face to dlib
    row = _row(case_run, case_inputs, "exif")
    assert (row["width"], row["height"]) == (stored.shape[0], stored.shape[1])  # the displayed orientation
    assert "EXIF orientation 6 applied" in row["notes"]


def test_alpha_is_kept(case_run, case_inputs):
    row = _row(case_run, case_inputs, "rgba")
    with Image.open(case_run[2] / row["output"]) as out, Image.open(case_inputs["rgba"]) as source:
        assert out.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(out)[:, :, 3], np.asarray(source)[:, :, 3])
        # opaque background far from the face keeps its colours exactly (upscale 1)
        far = (slice(0, 10), slice(RGBA_GRADIENT_FROM, RGBA_GRADIENT_FROM + 10))
        np.testing.assert_array_equal(np.asarray(out)[far], np.asarray(source)[far])


def test_photo_without_a_face_is_copied_through(case_run, case_inputs):
    row = _row(case_run, case_inputs, "noface")
    assert (row["status"], row["faces_found"], row["faces_restored"]) == (STATUS_NO_FACE, 0, 0)
    np.testing.assert_array_equal(load_rgb(case_run[2] / row["output"]), load_rgb(case_inputs["noface"]))


def test_tiny_face_is_reported_and_skipped(case_run, case_inputs):
    row = _row(case_run, case_inputs, "tiny")
    assert (row["status"], row["faces_found"], row["faces_restored"], row["faces_skipped_small"]) == \
        (STATUS_TOO_SMALL, 1, 0, 1)
    assert f"minimum face size {MIN_FACE} px" in row["reason"]
    np.testing.assert_array_equal(load_rgb(case_run[2] / row["output"]), load_rgb(case_inputs["tiny"]))


def test_names_are_kept_disambiguated_and_stay_inside_outdir(case_run, case_inputs):
    summary, _, out, _, _ = case_run
    outputs = [row["output"] for row in summary["photos"] if row["output"]]
    assert len(outputs) == len(set(outputs))
    assert _row(case_run, case_inputs, "plain")["output"] == "restored/same.jpg"
    assert _row(case_run, case_inputs, "clash")["output"] == "restored/same-2.jpg"
    shell = _row(case_run, case_inputs, "shell")["output"]
    assert shell == f"restored/{Path(SHELL_NAME).stem}.jpg" and (out / shell).is_file()
    assert not list(case_inputs["plain"].parents[2].rglob("pwned"))
    assert all((out / output).resolve().is_relative_to(out.resolve()) for output in outputs)
    assert [path.name for path in out.parent.iterdir()] == [out.name]  # nothing written beside OUTDIR
    assert "readme.txt" not in {Path(row["input"]).name for row in summary["photos"]}


def test_inputs_are_never_modified(case_run):
    _, _, _, before, after = case_run
    assert before == after


def test_summary_files_have_one_row_per_photo(case_run, case_inputs):
    summary, _, out, _, _ = case_run
    expected = len(case_inputs)
    assert len(summary["photos"]) == expected
    on_disk = json.loads((out / SUMMARY_JSON).read_text(encoding="utf-8"))
    assert on_disk["photos"] == summary["photos"]
    lines = (out / SUMMARY_CSV).read_text(encoding="utf-8").splitlines()
    assert lines[0].split(",") == list(SUMMARY_COLUMNS) and len(lines) == expected + 1
    for row in summary["photos"]:
        assert row["seconds"] > 0
        assert row["faces_found"] == (row["faces_restored"] + row["faces_skipped_small"]
                                      + row["faces_skipped_landmarks"] + row["faces_skipped_off_centre"]
                                      + row["faces_skipped_too_large"])
    assert pipeline.exit_code(summary) == 1  # the corrupt files failed


def test_index_escapes_names_and_links_existing_files(case_run):
    from urllib.parse import unquote

    out = case_run[2]
    page = (out / INDEX_HTML).read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.png" in page
    assert "<script" not in page.lower()
    sources = [part.split('"', 1)[0] for part in page.split('src="')[1:]]
    assert sources and all((out / unquote(source)).is_file() for source in sources)


# ------------------------------------------------------------------------------------ real photos, CLI
def test_wild_photos_upscaled_through_the_cli(tiny_weights, tmp_path, capsys):
    inputs = [WILD / name for name in WILD_PHOTOS]
    if not all(path.is_file() for path in inputs):
        prereq.missing(f"photos missing in {WILD}")
    out = tmp_path / "out"
    code = cli.main([*PARAMS, "restore", *map(str, inputs), "-o", str(out), "--weights", str(tiny_weights),
                     "--upscale", "2", "--device", "cpu", "--force"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / SUMMARY_JSON).read_text(encoding="utf-8"))
    for path, row in zip(inputs, summary["photos"], strict=True):
        rgb = load_rgb(path)
        assert row["status"] == STATUS_OK
        assert row["faces_restored"] == row["faces_found"] == _dlib_hog_count(rgb) > 0
        with Image.open(out / row["output"]) as restored:
            assert restored.size == (rgb.shape[1] * 2, rgb.shape[0] * 2)
        assert len(list((out / pipeline.FACES_DIR / path.stem).glob("face_*_after.png"))) == row["faces_restored"]
    assert "restore: 3 photos (3 ok, 0 failed)" in capsys.readouterr().out


def test_only_center_face_restores_one(tiny_weights, tmp_path):
    summary = pipeline.run_photos([WILD / "codeformer_00.jpg"], tmp_path / "out", weights=tiny_weights,
                                  only_center_face=True, progress=False)
    row = summary["photos"][0]
    assert (row["faces_restored"], row["faces_skipped_off_centre"]) == (1, row["faces_found"] - 1)


def test_outputs_are_not_overwritten_without_the_flag(tiny_weights, tmp_path):
    args = [*PARAMS, "restore", str(WILD / BASE_PHOTO), "-o", str(tmp_path / "out"), "--weights", str(tiny_weights),
            "--force"]  # its face is too large for the 64 px model: restored anyway, so faces/ is written
    assert cli.main(args) == 0
    restored = tmp_path / "out" / pipeline.RESTORED_DIR / f"{Path(BASE_PHOTO).stem}.jpg"
    stamp = (restored.stat().st_mtime_ns, _sha(restored))
    assert cli.main(args) == cli.EXIT_USAGE
    assert (restored.stat().st_mtime_ns, _sha(restored)) == stamp
    stale = restored.parent.parent / pipeline.FACES_DIR / Path(BASE_PHOTO).stem / "face_07_after.png"
    stale.write_bytes(b"from an earlier run with more faces")
    assert cli.main([*args, "--overwrite"]) == 0
    assert restored.stat().st_mtime_ns != stamp[0]
    assert not stale.exists()


def test_missing_weights_say_where_to_put_them(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no models/gfpgan/gfpgan.pth here
    code = cli.main([*PARAMS, "restore", str(WILD / BASE_PHOTO), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_FAILED
    assert str(pipeline.DEFAULT_WEIGHTS) in err and pipeline.OFFICIAL_WEIGHTS_NAME in err and "--weights" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [
    ["restore", "photo.jpg"],                                          # INPUT without -o
    ["restore", "photo.jpg", "-o", "out", "--in", "data/pairs"],       # the two forms mixed
    ["restore", "photo.jpg", "-o", "out", "--out", "data/restored"],
    ["restore", "-o", "out"],                                          # -o without INPUT
    ["restore", "photo.jpg", "-o", "out", "--upscale", "0"],           # value out of range
])
def test_usage_errors_exit_2(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photo.jpg").write_bytes((WILD / BASE_PHOTO).read_bytes())
    (tmp_path / "models" / "gfpgan").mkdir(parents=True)
    assert cli.main([*PARAMS, *argv]) == cli.EXIT_USAGE
    assert "usage error" in capsys.readouterr().err


def test_bad_option_value_is_an_argparse_usage_error():
    with pytest.raises(SystemExit) as raised:
        cli.main([*PARAMS, "restore", "photo.jpg", "-o", "out", "--device", "tpu"])
    assert raised.value.code == cli.EXIT_USAGE


def test_stage_form_is_unchanged(monkeypatch, tmp_path):
    from dlfp.stages import restore as restore_stage

    calls = []
    monkeypatch.setattr(restore_stage, "run", lambda params, pairs_dir, out_dir: calls.append((pairs_dir, out_dir)))
    assert cli.main([*PARAMS, "restore", "--in", "data/pairs", "--out", "data/restored"]) == 0
    assert cli.main([*PARAMS, "restore", "--in", str(tmp_path), "--out", str(tmp_path / "r")]) == 0
    assert calls == [(Path("data/pairs"), Path("data/restored")), (tmp_path, tmp_path / "r")]


# ------------------------------------------------------------------------------------------- geometry
def test_crop_then_paste_back_reproduces_the_face():
    """With an identity 'restorer' the pasted-back photo equals the input up to two resamplings."""
    rgb = load_rgb(WILD / "facexlib_test.jpg")
    landmarker = detection.landmarker_for("hog")  # the run's cached detector: loading the 68-point model is slow
    box = landmarker.detect(rgb)[0]
    points = template_points(landmarker.landmarks(rgb, box))
    size = 256
    matrix = geometry.similarity_to_template(points, size)
    mapped = cv2.transform(points[None].astype(np.float64), matrix)[0]
    assert np.abs(mapped - template_5_points(size)).max() < 0.1 * size  # the 5 points land near the template
    crop = geometry.crop_face(rgb, matrix, size)
    for upscale in (1, 2):
        canvas = geometry.resample(rgb, upscale)
        background = canvas.copy()
        geometry.paste_face(canvas, crop, matrix, upscale)
        inner = (slice(box.top * upscale, box.bottom * upscale), slice(box.left * upscale, box.right * upscale))
        difference = np.abs(canvas[inner].astype(int) - background[inner].astype(int)).mean()
        assert difference < 3.0, (upscale, difference)
        changed = np.any(canvas != background, axis=2)
        assert not changed[:, : max(box.left * upscale - size, 1)].any()  # nothing pasted far from the face


def test_feathered_mask_fades_at_the_edge():
    square = np.zeros((200, 200), np.float32)
    square[20:180, 20:180] = 1.0
    mask = geometry.feathered_mask(square)
    profile = mask[100, 15:100]
    assert mask[100, 100] == pytest.approx(1.0, abs=1e-5) and profile[0] == 0.0 and profile[5] < 0.01
    assert np.all(np.diff(profile) >= -1e-6)  # rises monotonically from the edge inwards
    assert np.count_nonzero((profile > 0.05) & (profile < 0.95)) >= 3  # over several pixels, not a step


# ------------------------------------------------------------------------------------ official weights
@pytest.mark.slow
def test_official_format_release_checkpoint_restores_a_face(tmp_path):
    """Our 512 release-config model saved as {'params_ema': ...}: the official layout, and it restores a face."""
    torch.manual_seed(0)
    path = save_official(release_model(), tmp_path / "GFPGANv1.4.pth")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert list(payload) == ["params_ema"]
    manifest = json.loads(MANIFEST_512.read_text(encoding="utf-8"))
    state = read_state_dict(path)
    assert {key: list(value.shape) for key, value in state.items()} == manifest
    del state, payload
    summary = pipeline.run_photos([WILD / BASE_PHOTO], tmp_path / "out", weights=path, progress=False,
                                  backend="torch")
    row = summary["photos"][0]
    assert (row["status"], row["faces_restored"]) == (STATUS_OK, 1)
    assert summary["run"]["model"]["out_size"] == 512
    with Image.open(tmp_path / "out" / row["crops"][0]["after"]) as face:
        assert face.size == (512, 512)


# ------------------------------------------------------------------------------------ faces too large
LARGE_FACES_PHOTO = "facerec_two_people.jpg"  # 1126x661, two faces (HOG boxes 186 and 156 px)
TOO_LOW = re.compile(r"model resolution too low \((\d+) px model, ((?:\d+ px(?:, )?)+) faces?\)")


def _too_low_sizes(reason: str) -> tuple[int, list[int]]:
    """(model px, face px...) from a 'model resolution too low (64 px model, 250 px face)' reason."""
    match = TOO_LOW.search(reason)
    assert match, reason
    return int(match.group(1)), [int(size) for size in re.findall(r"(\d+) px", match.group(2))]


def test_too_large_faces_are_left_untouched_with_the_reason(tiny_weights, tmp_path):
    path = WILD / LARGE_FACES_PHOTO
    if not path.is_file():
        prereq.missing(f"{path} missing")
    out = tmp_path / "out"
    # PNG out: the pixels are compared exactly (auto would re-encode this JPEG input as a lossy JPEG)
    summary = pipeline.run_photos([path], out, weights=tiny_weights, progress=False, ext="png")
    row = summary["photos"][0]
    boxes = dlib.get_frontal_face_detector()(np.ascontiguousarray(load_rgb(path)), detection.HOG_UPSAMPLE)
    assert row["status"] == STATUS_RESOLUTION_TOO_LOW
    assert (row["faces_found"], row["faces_restored"], row["faces_skipped_too_large"]) == (len(boxes), 0, len(boxes))
    model_px, face_px = _too_low_sizes(row["reason"])
    assert model_px == TINY["out_size"]
    # The aligned crop around a face is wider than dlib's box round its eyes, nose and mouth, but not 3x wider.
    sides = sorted(box.width() for box in boxes)
    assert [side < size < 3 * side for side, size in zip(sides, sorted(face_px), strict=True)] == [True, True]
    assert min(face_px) > pipeline.DEFAULT_TOO_LARGE_RATIO * TINY["out_size"]
    np.testing.assert_array_equal(load_rgb(out / row["output"]), load_rgb(path))  # not one pixel changed
    assert row["crops"] == []
    csv_text = (out / SUMMARY_CSV).read_text(encoding="utf-8")
    assert row["reason"] in csv_text and "faces_skipped_too_large" in csv_text.splitlines()[0]
    assert row["reason"] in (out / INDEX_HTML).read_text(encoding="utf-8")
    assert pipeline.exit_code(summary) == 0  # a success: the photo is copied through, never silently degraded


def test_one_large_face_reason_names_both_sizes(tiny_weights, tmp_path):
    summary = pipeline.run_photos([WILD / BASE_PHOTO], tmp_path / "out", weights=tiny_weights, progress=False)
    row = summary["photos"][0]
    assert row["status"] == STATUS_RESOLUTION_TOO_LOW
    model_px, face_px = _too_low_sizes(row["reason"])
    assert row["reason"].startswith(f"model resolution too low ({model_px} px model, {face_px[0]} px face)")
    assert len(face_px) == 1 and face_px[0] > pipeline.DEFAULT_TOO_LARGE_RATIO * model_px


def test_force_restores_too_large_faces(tiny_weights, tmp_path):
    path = WILD / LARGE_FACES_PHOTO
    out = tmp_path / "out"
    code = cli.main([*PARAMS, "restore", str(path), "-o", str(out), "--weights", str(tiny_weights), "--device",
                     "cpu", "--force"])
    assert code == 0
    row = json.loads((out / SUMMARY_JSON).read_text(encoding="utf-8"))["photos"][0]
    assert (row["status"], row["faces_skipped_too_large"]) == (STATUS_OK, 0)
    assert row["faces_restored"] == row["faces_found"] > 0
    assert np.any(load_rgb(out / row["output"]) != load_rgb(path))


def test_too_large_ratio_splits_a_group_photo(tiny_weights, tmp_path):
    """codeformer_00's four faces span 61-75 px at the 64 px model: ratio 1.1 leaves the larger ones alone."""
    summary = pipeline.run_photos([WILD / "codeformer_00.jpg"], tmp_path / "out", weights=tiny_weights,
                                  too_large_ratio=1.1, progress=False)
    row = summary["photos"][0]
    assert row["status"] == STATUS_OK
    assert row["faces_restored"] > 0 and row["faces_skipped_too_large"] > 0
    assert row["faces_restored"] + row["faces_skipped_too_large"] == row["faces_found"]
    _, face_px = _too_low_sizes(row["reason"])
    assert len(face_px) == row["faces_skipped_too_large"] and min(face_px) > 1.1 * TINY["out_size"]
    assert "--force" in row["reason"] and len(row["crops"]) == row["faces_restored"]


# ------------------------------------------------------------------------------ official weights by name
RELEASE_FILE = "GFPGANv1.4.pth"
SERVED = f"/releases/{RELEASE_FILE}"


def _release_layout_bytes(tmp_path: Path, drop: str | None = None) -> bytes:
    """A file in the official layout ({'params_ema': state_dict}, every key and shape of the 512 release model).

    Each tensor is one stored zero expanded to its shape (stride 0): the file is about 90 kB instead of 340 MB,
    while the strict structural check, which reads keys and shapes, sees exactly the release layout.
    """
    with torch.device("meta"):
        model = release_model()
    state = {key: torch.zeros(1, dtype=value.dtype).expand(value.shape)
             for key, value in model.state_dict().items() if key != drop}
    if drop is None:
        assert {key: list(value.shape) for key, value in state.items()} == json.loads(MANIFEST_512.read_text())
    path = tmp_path / "served.pth"
    torch.save({"params_ema": state}, path)
    return path.read_bytes()


@pytest.fixture
def release_server(server, tmp_path, monkeypatch):
    """The local server stands in for the release URL; $DLFP_CACHE is this test's own."""
    monkeypatch.setenv(official_weights.URL_ENV, server.url("/releases"))
    monkeypatch.setenv("DLFP_CACHE", str(tmp_path / "cache"))
    return server


def test_official_weights_by_name_are_downloaded_once_checked_and_hashed(release_server, tmp_path, capsys,
                                                                         monkeypatch):
    body = _release_layout_bytes(tmp_path)
    half = len(body) // 2
    # The server drops the connection after `half` bytes twice: on the 1-byte probe (which it fits in) and on the
    # download, which breaks off halfway.
    release_server.serve(SERVED, body, drop_after=half, drops_left=2)
    monkeypatch.setattr("dlfp.io.download.time.sleep", lambda seconds: None)  # no backoff wait in a test
    cached = tmp_path / "cache" / "weights" / RELEASE_FILE
    out = tmp_path / "out"
    code = cli.main([*PARAMS, "restore", str(WILD / BASE_PHOTO), "-o", str(out), "--weights", "gfpgan-v1.4",
                     "--device", "cpu", "--backend", "torch"])
    assert code == 0, capsys.readouterr().err
    assert cached.read_bytes() == body
    # probe, download (broken off), resumed download from the first missing byte
    assert [seen.range for seen in release_server.requests] == ["bytes=0-0", None, f"bytes={half}-"]
    record = json.loads((out / SUMMARY_JSON).read_text(encoding="utf-8"))["run"]["weights_file"]
    assert record["sha256"] == hashlib.sha256(body).hexdigest() and record["file"] == str(cached)
    assert record["url"] == release_server.url(SERVED) and record["downloaded_now"] is True
    assert record["matches_release"] is False  # a stand-in, not the real release file: recorded, not hidden
    assert record["sha256"] in (out / INDEX_HTML).read_text(encoding="utf-8")
    card = (cached.parent / "GFPGANv1.4.MODEL_CARD.md").read_text(encoding="utf-8")  # issue 14: beside the weights
    assert "# Model card: official GFP-GAN weights gfpgan-v1.4" in card and record["sha256"] in card
    assert "differs from the release file's" in card and "Apache License 2.0" in card and "FFHQ" in card
    for heading in ("Intended use", "Training data", "Evaluation", "Bias", "Limitations", "Ethical considerations"):
        assert f"\n## {heading}\n" in card
    assert "Out of scope: identifying people" in card
    assert card.count("not computed: official weights, not evaluated here") >= 3  # evaluation, bias, ethics
    row = json.loads((out / SUMMARY_JSON).read_text(encoding="utf-8"))["photos"][0]
    assert (row["status"], row["faces_restored"]) == (STATUS_OK, 1)  # a 512 px model: the face fits
    requests = release_server.count(SERVED)

    flat = tmp_path / "wall.png"
    Image.new("RGB", (64, 48), (90, 90, 90)).save(flat)
    code = cli.main([*PARAMS, "restore", str(flat), "-o", str(tmp_path / "again"), "--weights", "gfpgan-v1.4",
                     "--device", "cpu", "--backend", "torch"])
    assert code == 0, capsys.readouterr().err
    assert release_server.count(SERVED) == requests  # the cached copy: no request at all
    again = json.loads((tmp_path / "again" / SUMMARY_JSON).read_text(encoding="utf-8"))["run"]
    assert again["weights_file"]["sha256"] == record["sha256"] and again["weights_file"]["downloaded_now"] is False


def test_served_file_with_a_missing_key_is_rejected_and_not_cached(release_server, tmp_path, capsys):
    missing = "stylegan_decoder.to_rgbs.3.modulated_conv.weight"
    release_server.serve(SERVED, _release_layout_bytes(tmp_path, drop=missing))
    cached = tmp_path / "cache" / "weights" / RELEASE_FILE
    args = [*PARAMS, "restore", str(WILD / BASE_PHOTO), "-o", str(tmp_path / "out"), "--weights", "gfpgan-v1.4"]
    assert cli.main(args) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert str(cached) in err and missing in err
    assert not cached.exists() and not (tmp_path / "out" / SUMMARY_JSON).exists()
    requests = release_server.count(SERVED)
    assert cli.main(args) == cli.EXIT_FAILED
    assert release_server.count(SERVED) > requests  # the bad copy was not taken for a valid cached file


def test_unreachable_release_server_fails_at_once_with_url_and_folder(tmp_path, monkeypatch, capsys):
    with socket.socket() as probe:  # a port with nothing listening: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(official_weights.URL_ENV, f"http://127.0.0.1:{port}/releases")
    monkeypatch.setenv("DLFP_CACHE", str(tmp_path / "cache"))
    waits = []
    monkeypatch.setattr("dlfp.io.download.time.sleep", waits.append)  # retries would back off here
    code = cli.main([*PARAMS, "restore", str(WILD / BASE_PHOTO), "-o", str(tmp_path / "out"), "--weights",
                     "gfpgan-v1.3"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_FAILED
    assert f"http://127.0.0.1:{port}/releases/GFPGANv1.3.pth" in err
    assert f"{tmp_path / 'cache' / 'weights'}/" in err and "by hand" in err
    assert waits == []  # one probe, no retry loop
    assert not (tmp_path / "cache" / "weights" / "GFPGANv1.3.pth").exists()


# ------------------------------------------------------------------------- provenance label, output formats
XMP_NS = {"rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#", "xmp": "http://ns.adobe.com/xap/1.0/",
          "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"}
IPTC_COMPOSITE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
JPEG_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"


def _xmp_of(path: Path) -> ET.Element:
    """The XMP packet as Pillow's own JPEG/PNG/WebP parsers expose it, parsed by ElementTree (not dl-fp code)."""
    with Image.open(path) as image:
        packet = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    assert packet, f"{path}: no XMP packet"
    text = packet.decode("utf-8") if isinstance(packet, bytes) else packet
    return ET.fromstring(re.sub(r"<\?xpacket[^>]*\?>", "", text).strip())


def _label(path: Path) -> dict[str, object]:
    root = _xmp_of(path)
    description = root.find("rdf:RDF/rdf:Description", XMP_NS)
    assert description is not None
    fields = {child.tag.rsplit("}", 1)[1]: child for child in description}
    boxes = [tuple(int(v) for v in li.text.split(",")) for li in fields["RestoredFaces"].iter(f"{{{XMP_NS['rdf']}}}li")]
    return {"source_type": description.find("Iptc4xmpExt:DigitalSourceType", XMP_NS).text,
            "creator": description.find("xmp:CreatorTool", XMP_NS).text,
            "sha256": fields["WeightsSHA256"].text, "faces": boxes}


@pytest.fixture(scope="module")
def format_run(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    """A JPEG with an sRGB ICC profile and a PNG with alpha, both with the real photo's face, in one auto run."""
    rgb = load_rgb(WILD / BASE_PHOTO)
    root = tmp_path_factory.mktemp("formats")
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    jpeg = _save(Image.fromarray(rgb), root / "in" / "icc.jpg", quality=92, icc_profile=icc)
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :RGBA_GRADIENT_FROM] = np.linspace(0, 255, RGBA_GRADIENT_FROM, dtype=np.uint8)[None, :]
    png = _save(Image.fromarray(np.dstack([rgb, alpha])), root / "in" / "alpha.png")
    out = root / "out"
    summary = pipeline.run_photos([jpeg, png], out, weights=tiny_weights, force=True, progress=False)
    rows = {Path(row["input"]).name: row for row in summary["photos"]}
    return summary, rows, out, icc, tiny_weights


def test_auto_keeps_jpeg_with_its_icc_profile_and_labels_it(format_run):
    summary, rows, out, icc, weights = format_run
    row = rows["icc.jpg"]
    assert row["status"] == STATUS_OK and row["output"] == "restored/icc.jpg"
    path = out / row["output"]
    with Image.open(path) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (row["width"], row["height"]))
        assert image.info["icc_profile"] == icc
    data = path.read_bytes()
    app1 = data.find(b"\xff\xe1")
    assert app1 > 0 and data[app1 + 4:app1 + 4 + len(JPEG_XMP_HEADER)] == JPEG_XMP_HEADER
    label = _label(path)
    assert label["source_type"] == IPTC_COMPOSITE
    assert label["creator"] == f"dl-fp {importlib.metadata.version('dlfp')}"
    assert label["sha256"] == _sha(weights) == summary["run"]["weights_file"]["sha256"]
    assert len(label["faces"]) == row["faces_restored"] == 1
    left, top, right, bottom = label["faces"][0]
    assert 0 <= left < right <= row["out_width"] and 0 <= top < bottom <= row["out_height"]


def test_png_with_alpha_stays_png_with_alpha_and_is_labelled(format_run):
    _, rows, out, _, weights = format_run
    row = rows["alpha.png"]
    path = out / row["output"]
    assert row["output"] == "restored/alpha.png"
    with Image.open(path) as image, Image.open(out.parent / "in" / "alpha.png") as source:
        assert (image.format, image.mode) == ("PNG", "RGBA")
        np.testing.assert_array_equal(np.asarray(image)[:, :, 3], np.asarray(source)[:, :, 3])
    assert b"iTXtXML:com.adobe.xmp\x00" in path.read_bytes()
    label = _label(path)
    assert label["source_type"] == IPTC_COMPOSITE and label["sha256"] == _sha(weights)
    assert len(label["faces"]) == row["faces_restored"] == 1
    # the box is where the photo changed: outside it every pixel is the input's, inside some are not
    left, top, right, bottom = label["faces"][0]
    with Image.open(path) as image, Image.open(out.parent / "in" / "alpha.png") as source:
        changed = np.any(np.asarray(image) != np.asarray(source), axis=2)
        opaque = np.asarray(source)[:, :, 3] == 255  # (un-compositing round colours where alpha < 255)
    inside = np.zeros_like(changed)
    inside[top:bottom, left:right] = True
    assert inside.mean() < 0.5  # a box round the face, not the whole photo
    assert changed[inside].any() and not changed[~inside & opaque].any(), np.argwhere(changed & ~inside & opaque)[:5]


def test_face_crops_are_labelled(format_run):
    _, rows, out, _, weights = format_run
    crops = [out / path for row in rows.values() for crop in row["crops"] for path in crop.values()]
    assert len(crops) == 4
    for path in crops:
        label = _label(path)
        assert label["source_type"] == IPTC_COMPOSITE and label["sha256"] == _sha(weights)
        with Image.open(path) as image:
            side = image.width
        assert label["faces"] == ([(0, 0, side, side)] if path.name.endswith("_after.png") else [])


@prereq.needs(shutil.which("exiftool") is not None, "exiftool not installed (make exiftool)")
def test_exiftool_reads_the_label_of_jpeg_png_and_crops(format_run):
    """An independent reader (Debian's exiftool, Perl) finds the same label in every kind of output."""
    _, rows, out, _, weights = format_run
    paths = [out / rows["icc.jpg"]["output"], out / rows["alpha.png"]["output"],
             out / rows["icc.jpg"]["crops"][0]["after"]]
    listing = subprocess.run(["exiftool", "-json", "-XMP:all", "--", *map(str, paths)], check=True,
                             capture_output=True, text=True).stdout
    tags = {Path(entry["SourceFile"]): entry for entry in json.loads(listing)}
    for path in paths:
        assert tags[path]["DigitalSourceType"] == IPTC_COMPOSITE
        assert tags[path]["CreatorTool"] == f"dl-fp {importlib.metadata.version('dlfp')}"
        assert tags[path]["WeightsSHA256"] == _sha(weights)
        assert tags[path]["RestoredFaces"] == ",".join(map(str, _label(path)["faces"][0]))


def test_summary_and_index_say_the_outputs_are_labelled(format_run):
    summary, _, out, _, _ = format_run
    assert summary["run"]["provenance"]["digital_source_type"] == IPTC_COMPOSITE
    assert "carries an XMP label" in summary["run"]["provenance"]["note"]
    page = (out / INDEX_HTML).read_text(encoding="utf-8")
    assert "Every image written here carries an XMP label" in page and IPTC_COMPOSITE in page


def test_ext_webp_with_quality_through_the_cli(tiny_weights, tmp_path, capsys):
    out = tmp_path / "out"
    args = [*PARAMS, "restore", str(WILD / BASE_PHOTO), "--weights", str(tiny_weights), "--device", "cpu", "--force"]
    assert cli.main([*args, "-o", str(out), "--ext", "webp", "--quality", "80"]) == 0, capsys.readouterr().err
    assert cli.main([*args, "-o", str(tmp_path / "q20"), "--ext", "webp", "--quality", "20"]) == 0
    name = f"{pipeline.RESTORED_DIR}/{Path(BASE_PHOTO).stem}.webp"
    with Image.open(out / name) as image:
        assert (image.format, image.size) == ("WEBP", Image.open(WILD / BASE_PHOTO).size)
    assert (tmp_path / "q20" / name).stat().st_size < (out / name).stat().st_size  # --quality reaches the encoder
    assert _label(out / name)["source_type"] == IPTC_COMPOSITE


def test_rgba_written_as_jpeg_is_composited_on_white_with_a_note(tiny_weights, tmp_path):
    rgb = load_rgb(WILD / BASE_PHOTO)
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :RGBA_GRADIENT_FROM] = 0
    path = _save(Image.fromarray(np.dstack([rgb, alpha])), tmp_path / "cut.png")
    summary = pipeline.run_photos([path], tmp_path / "out", weights=tiny_weights, force=True, progress=False,
                                  ext="jpg")
    row = summary["photos"][0]
    assert row["output"] == "restored/cut.jpg" and "alpha composited on white" in row["notes"]
    with Image.open(tmp_path / "out" / row["output"]) as image:
        assert (image.format, image.mode) == ("JPEG", "RGB")
        assert np.asarray(image)[:, : RGBA_GRADIENT_FROM - 4].min() > 240  # the transparent strip is white


@pytest.mark.parametrize("quality", ["0", "101"])
def test_bad_quality_is_a_usage_error(quality, tmp_path, capsys):
    code = cli.main([*PARAMS, "restore", str(WILD / BASE_PHOTO), "-o", str(tmp_path / "out"), "--quality", quality])
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "usage error" in err and "--quality must be an integer from 1 to 100" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ inference backend
needs_openvino = prereq.needs(inference.openvino_installed(), f"OpenVINO not installed ({inference.OPENVINO_EXTRA})")
LEVEL_TOLERANCE = 1  # OpenVINO equals torch within 1e-4 on [-1, 1]: at most one 8-bit level after rounding
MEAN_LEVEL_TOLERANCE = 0.01


def _restore_cli(weights: Path, out: Path, backend: str, capsys) -> dict:
    code = cli.main([*PARAMS, "restore", str(WILD / BASE_PHOTO), "-o", str(out), "--weights", str(weights),
                     "--device", "cpu", "--ext", "png", "--backend", backend, "--force"])
    assert code == 0, capsys.readouterr().err
    return json.loads((out / SUMMARY_JSON).read_text(encoding="utf-8"))


def _levels_apart(first: Path, second: Path) -> np.ndarray:
    return np.abs(load_rgb(first).astype(np.int16) - load_rgb(second).astype(np.int16))


@pytest.mark.slow  # one OpenVINO conversion: ~30 s idle, minutes on a loaded 2-core machine
@needs_openvino
def test_backend_openvino_matches_torch_records_itself_and_reuses_its_cache(tiny_weights, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setenv("DLFP_CACHE", str(tmp_path / "cache"))
    torch_run = _restore_cli(tiny_weights, tmp_path / "torch", "torch", capsys)
    openvino_run = _restore_cli(tiny_weights, tmp_path / "openvino", "openvino", capsys)
    assert (torch_run["run"]["backend"], openvino_run["run"]["backend"]) == ("torch", "openvino")
    version = openvino_run["run"]["backend_version"]
    assert version.startswith(f"openvino {importlib.metadata.version('openvino')}")
    assert version in (tmp_path / "openvino" / INDEX_HTML).read_text(encoding="utf-8")
    row_torch, row_openvino = torch_run["photos"][0], openvino_run["photos"][0]
    assert row_openvino["status"] == STATUS_OK and row_openvino["faces_restored"] == row_torch["faces_restored"] == 1
    pairs = [(row_torch["output"], row_openvino["output"])] + [
        (a["after"], b["after"]) for a, b in zip(row_torch["crops"], row_openvino["crops"], strict=True)]
    for torch_file, openvino_file in pairs:
        apart = _levels_apart(tmp_path / "torch" / torch_file, tmp_path / "openvino" / openvino_file)
        assert apart.max() <= LEVEL_TOLERANCE and apart.mean() < MEAN_LEVEL_TOLERANCE, torch_file
    face_before = load_rgb(tmp_path / "torch" / row_torch["crops"][0]["before"]).astype(np.int16)
    assert np.abs(face_before - load_rgb(tmp_path / "torch" / row_torch["crops"][0]["after"])).mean() > 1  # changed
    cached = list((tmp_path / "cache" / inference.CACHE_SUBDIR).glob(f"*/{inference.MODEL_FILE}"))
    assert len(cached) == 1

    def no_conversion(*args: object) -> Path:
        raise AssertionError("converted again although the cache holds this model")

    monkeypatch.setattr(inference, "convert_to_openvino", no_conversion)
    again = _restore_cli(tiny_weights, tmp_path / "again", "openvino", capsys)
    assert again["run"]["backend"] == "openvino"
    assert _levels_apart(tmp_path / "openvino" / row_openvino["output"],
                         tmp_path / "again" / again["photos"][0]["output"]).max() == 0


def test_missing_openvino_falls_back_to_torch_with_one_log_line(tiny_weights, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(inference, "openvino_installed", lambda: False)
    summary = _restore_cli(tiny_weights, tmp_path / "out", "openvino", capsys)
    err = capsys.readouterr().err  # the CLI's own log handler writes to stderr
    mentions = [line for line in err.splitlines() if "openvino" in line.lower()]
    assert len(mentions) == 1 and inference.OPENVINO_EXTRA in mentions[0], err
    assert (summary["run"]["backend_requested"], summary["run"]["backend"]) == ("openvino", "torch")
    row = summary["photos"][0]
    assert (row["status"], row["faces_restored"]) == (STATUS_OK, 1) and (tmp_path / "out" / row["output"]).is_file()
    assert "inference backend torch" in (tmp_path / "out" / INDEX_HTML).read_text(encoding="utf-8")
