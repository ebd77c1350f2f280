"""The align stage on real faces from ../shared/faces: passthrough of aligned faces, FFHQ alignment of wild
photos, rejections, geometry helpers, and byte-identical output whatever the worker count."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import _dlfp_test_prereq as prereq  # tests/_prereq.py, registered by conftest.py
import cv2
import numpy as np
import pytest
from _dlfp_test_faces import FACES, SHARED_FACES, WILD  # tests/_faces.py, registered by conftest.py

from dlfp.faces import alignment
from dlfp.faces.landmarks import (
    TEMPLATE_5_POINTS_512,
    FaceBox,
    FaceLandmarker,
    LandmarkError,
    check_landmarks,
    component_boxes,
    ffhq_quad,
    mirror_component_boxes,
    template_5_points,
    template_points,
)
from dlfp.io.images import encode_png, load_rgb
from dlfp.params import Params, parse_params
from dlfp.stages import align

SIZE = 256

# Real aligned faces of every kind in aligned_hq: FFHQ 256 JPEG and PNG, FFHQ 1024, GFP-GAN's 512, other sets.
ALIGNED_FILES = [
    *(f"ffhq256_{i:05d}.jpg" for i in (0, 3, 7, 10, 13, 16, 19, 22, 25, 28, 31, 34, 37)),
    "ffhq256_00049.jpg",                  # a 37 px background face beside the main one: ignored
    "ffhq256png_69037.png", "ffhq256png_69887.png", "ffhq1024_00000.png", "gfpgan_testgt512_00000000.png",
    "celeb256_idinvert_000001.png", "ii2s1024_barbershop_117.png",
]
WILD_SINGLE = "dfdnet_test4.jpg"          # one 155 px face in a 307x384 photo
WILD_SEVERAL = "codeformer_01.jpg"        # three faces of 53 px (and one of 44 px)
WILD_TINY = "mtcnn_office1.jpg"           # one 37 px face
ROTATED_FACE = "ffhq1024_00001.png"
ROTATION_DEG = 15.0

pytestmark = prereq.needs(SHARED_FACES.is_dir(), f"{SHARED_FACES} (shared face images) not present")


def make_params(**align_params: object) -> Params:
    return parse_params({"data": {"folder": "unused", "size": SIZE}, "align": align_params})


def rotated_paste(face: np.ndarray, angle_deg: float) -> np.ndarray:
    """An aligned face shrunk to 300 px on a flat canvas with a border, rotated about a point off its centre."""
    small = cv2.resize(face, (300, 300), interpolation=cv2.INTER_AREA)
    canvas = cv2.copyMakeBorder(small, 150, 150, 200, 100, cv2.BORDER_CONSTANT, value=(90, 120, 150))
    height, width = canvas.shape[:2]
    matrix = cv2.getRotationMatrix2D((330.0, 310.0), angle_deg, 1.0)
    return cv2.warpAffine(canvas, matrix, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(90, 120, 150))


def write_raw(folder: Path, images: dict[str, np.ndarray], ffhq_ids: dict[str, int] | None = None,
              acquire_rejects: list[dict[str, str]] | None = None) -> Path:
    """A folder shaped like the acquire stage's output: images/<id>.png, manifest.csv, rejects.csv."""
    (folder / "images").mkdir(parents=True)
    for image_id, rgb in images.items():
        (folder / "images" / f"{image_id}.png").write_bytes(encode_png(rgb))
    with open(folder / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "source", "licence", "ffhq_id", "width", "height"])
        for image_id, rgb in images.items():
            ffhq_id = (ffhq_ids or {}).get(image_id, "")
            writer.writerow([image_id, "shared/faces", "test licence", ffhq_id, rgb.shape[1], rgb.shape[0]])
    with open(folder / "rejects.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "source", "reason"])
        writer.writeheader()
        writer.writerows(acquire_rejects or [])
    return folder


def read_meta(out: Path) -> dict[str, dict]:
    lines = (out / "meta.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)
    return {r["id"]: r for r in records}


def read_rejects(out: Path) -> dict[str, dict]:
    with open(out / "rejects.csv", newline="", encoding="utf-8") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def landmarker() -> FaceLandmarker:
    return FaceLandmarker("hog", 1)


@pytest.fixture(scope="module")
def aligned_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    raw = tmp_path_factory.mktemp("aligned") / "raw"
    images = {Path(name).stem: load_rgb(FACES / name) for name in ALIGNED_FILES}
    ffhq_ids = {stem: int(stem.split("_")[1]) for stem in images if stem.startswith("ffhq")}
    write_raw(raw, images, ffhq_ids)
    out = raw.parent / "aligned"
    summary = align.run(make_params(), raw, out, workers=1)
    return out, summary


@pytest.fixture(scope="module")
def wild_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    images = {
        "wild_single": load_rgb(WILD / WILD_SINGLE),
        "rotated": rotated_paste(load_rgb(FACES / ROTATED_FACE), ROTATION_DEG),
        "several": load_rgb(WILD / WILD_SEVERAL),
        "tiny": load_rgb(WILD / WILD_TINY),
        "blank": np.full((200, 240, 3), 128, dtype=np.uint8),
    }
    rejects = [{"id": "broken", "source": "shared/faces", "reason": "truncated or corrupt"}]
    return write_raw(tmp_path_factory.mktemp("wild") / "raw", images, acquire_rejects=rejects)


@pytest.fixture(scope="module")
def wild_run(wild_raw: Path) -> tuple[Path, dict]:
    out = wild_raw.parent / "aligned_w1"
    return out, align.run(make_params(), wild_raw, out, workers=1)


# ------------------------------------------------------------------------------------------ geometry
def upright_landmarks(eye_y: float = 100.0) -> np.ndarray:
    """68 points of a schematic upright face: eyes at y = eye_y, mouth 60 px lower."""
    points = np.zeros((68, 2))
    points[36:42] = [(70 + dx, eye_y + dy) for dx, dy in ((-10, 0), (-5, -3), (5, -3), (10, 0), (5, 3), (-5, 3))]
    points[42:48] = points[36:42] + [60, 0]
    outer = np.linspace(np.pi, -np.pi, 12, endpoint=False)    # 48 = left corner, 54 = right corner
    inner = np.linspace(np.pi, -np.pi, 8, endpoint=False)
    points[48:60] = np.stack([100 + 25 * np.cos(outer), eye_y + 60 - 8 * np.sin(outer)], axis=1)
    points[60:68] = np.stack([100 + 15 * np.cos(inner), eye_y + 60 - 3 * np.sin(inner)], axis=1)
    points[30] = (100, eye_y + 30)
    points[0:17] = np.linspace([40, eye_y], [160, eye_y], 17)
    return points


def test_ffhq_quad_of_an_upright_face_is_an_axis_aligned_square() -> None:
    points = upright_landmarks()
    quad = ffhq_quad(points)
    # eye_to_eye = (60, 0), eye_to_mouth = (0, 60): x = (120, 0) scaled to max(120, 108) = 120.
    np.testing.assert_allclose(quad.x, [120, 0], atol=1e-9)
    np.testing.assert_allclose(quad.y, [0, 120], atol=1e-9)
    np.testing.assert_allclose(quad.centre, [100, 106], atol=1e-9)
    np.testing.assert_allclose(quad.corners, [[-20, -14], [-20, 226], [220, 226], [220, -14]], atol=1e-9)
    assert quad.size == pytest.approx(240) and quad.angle == pytest.approx(0)


def test_quad_frame_error_and_alignment_rule() -> None:
    # The face of upright_landmarks fills a 240 px frame exactly once shifted by (19.5, 13.5) px.
    points = upright_landmarks() + [19.5, 13.5]
    quad = ffhq_quad(points)
    assert alignment.quad_frame_error(quad, 240, 240) == pytest.approx(0, abs=1e-9)
    assert alignment.is_aligned(quad, 240, 240, 0.01)
    assert not alignment.is_aligned(quad, 240, 250, 0.5), "non-square frames are never passthrough"
    shifted = ffhq_quad(points + [24, 0])    # 10 % of the side
    assert alignment.quad_frame_error(shifted, 240, 240) == pytest.approx(0.1)
    assert not alignment.is_aligned(shifted, 240, 240, 0.08)
    turn = cv2.getRotationMatrix2D((120, 120), 10, 1.0)
    rotated = ffhq_quad(alignment.apply_affine(points, turn))
    assert abs(np.degrees(rotated.angle)) == pytest.approx(10)
    assert not alignment.is_aligned(rotated, 240, 240, 0.08), "a 10 degree tilt is not aligned"


def test_input_to_output_affine_maps_the_quad_onto_the_output_frame() -> None:
    quad = ffhq_quad(alignment.apply_affine(upright_landmarks(), cv2.getRotationMatrix2D((100, 100), 30, 1.3)))
    affine = alignment.input_to_output_affine(quad, SIZE)
    corners = alignment.apply_affine(quad.corners, affine)
    np.testing.assert_allclose(corners, [[-0.5, -0.5], [-0.5, SIZE - 0.5], [SIZE - 0.5, SIZE - 0.5],
                                         [SIZE - 0.5, -0.5]], atol=1e-9)


def test_scale_points_keeps_pixel_centres() -> None:
    points = np.array([[-0.5, -0.5], [1023.5, 1023.5], [511.5, 0.0]])
    np.testing.assert_allclose(alignment.scale_points(points, 0.25, 0.25), [[-0.5, -0.5], [255.5, 255.5],
                                                                        [127.5, -0.375]])


def test_component_boxes_follow_the_spec() -> None:
    points = upright_landmarks()
    boxes = component_boxes(points, 512)
    # Eyes: 20 px wide, half 10 < 16 px minimum at 512, then x1.4; mouth: 50 px wide -> half 25.
    assert boxes["left_eye"] == pytest.approx([70, 100, 16 * 1.4])
    assert boxes["right_eye"] == pytest.approx([130, 100, 16 * 1.4])
    assert boxes["mouth"] == pytest.approx([100, 160, 25])
    assert component_boxes(points, 256)["left_eye"][2] == pytest.approx(10 * 1.4), "minimum scales with size"


def test_mirrored_boxes_swap_the_eyes_without_touching_the_original() -> None:
    boxes = component_boxes(upright_landmarks(), 200)
    before = {name: list(box) for name, box in boxes.items()}
    flipped = mirror_component_boxes(boxes, 200)
    assert boxes == before, "mirroring must not mutate cached boxes"
    assert flipped["left_eye"] == pytest.approx([199 - 130, 100, boxes["right_eye"][2]])
    assert flipped["right_eye"] == pytest.approx([199 - 70, 100, boxes["left_eye"][2]])
    assert flipped["left_eye"][0] < flipped["right_eye"][0]
    twice = mirror_component_boxes(flipped, 200)
    assert all(twice[name] == pytest.approx(boxes[name]) for name in boxes)


def test_template_points_come_from_the_68_points() -> None:
    points = upright_landmarks()
    np.testing.assert_allclose(template_points(points), [[70, 100], [130, 100], [100, 130], [75, 160],
                                                         [125, 160]])
    np.testing.assert_allclose(template_5_points(256), TEMPLATE_5_POINTS_512 / 2)


def test_check_landmarks_rejects_implausible_points() -> None:
    box = FaceBox(40, 60, 160, 180)
    check_landmarks(upright_landmarks(), box)
    upside_down = upright_landmarks() * [1, -1] + [0, 300]
    with pytest.raises(LandmarkError, match="mouth not below"):
        check_landmarks(upside_down, box)
    with pytest.raises(LandmarkError, match="collapsed"):
        check_landmarks(np.full((68, 2), 100.0), box)


def test_select_face_ignores_small_background_faces() -> None:
    big, small = FaceBox(0, 0, 99, 99), FaceBox(200, 0, 229, 29)
    assert alignment.select_face([big, small], 48) == big
    with pytest.raises(alignment.FaceRejected) as several:
        alignment.select_face([big, FaceBox(200, 0, 299, 99)], 48)
    assert several.value.reason == alignment.REJECT_SEVERAL_FACES
    with pytest.raises(alignment.FaceRejected) as tiny:
        alignment.select_face([small], 48)
    assert tiny.value.reason == alignment.REJECT_TOO_SMALL
    with pytest.raises(alignment.FaceRejected) as none:
        alignment.select_face([], 48)
    assert none.value.reason == alignment.REJECT_NO_FACE


def test_shrink_path_matches_the_direct_alignment(landmarker: FaceLandmarker) -> None:
    """A 4x larger copy goes through the shrink step and must give the same face at the same place."""
    photo = rotated_paste(load_rgb(FACES / ROTATED_FACE), ROTATION_DEG)
    boxes = landmarker.detect(photo)
    points = landmarker.landmarks(photo, boxes[0])
    quad = ffhq_quad(points)
    big = cv2.resize(photo, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    big_quad = ffhq_quad(alignment.scale_points(points, 4, 4))
    assert int(np.floor(big_quad.size / SIZE * alignment.SHRINK_RATIO)) > 1, "the test must exercise the shrink"
    direct, shrunk = alignment.ffhq_align(photo, quad, SIZE), alignment.ffhq_align(big, big_quad, SIZE)
    assert direct.shape == shrunk.shape == (SIZE, SIZE, 3)
    assert np.abs(direct.astype(float) - shrunk.astype(float)).mean() < 3.0
    np.testing.assert_allclose(alignment.apply_affine(points, alignment.input_to_output_affine(quad, SIZE)),
                               alignment.apply_affine(alignment.scale_points(points, 4, 4),
                                                      alignment.input_to_output_affine(big_quad, SIZE)), atol=1e-6)


# --------------------------------------------------------------------------------------- the stage
def test_aligned_faces_pass_through(aligned_run: tuple[Path, dict]) -> None:
    out, summary = aligned_run
    meta = read_meta(out)
    assert summary["input"] == summary["kept"] == summary["passthrough"] == len(ALIGNED_FILES)
    assert summary["aligned"] == summary["rejected"] == 0
    assert sorted(meta) == sorted(Path(name).stem for name in ALIGNED_FILES)
    min_half = 16 * SIZE / 512
    for image_id, record in meta.items():
        assert record["alignment"] == "passthrough", image_id
        assert load_rgb(out / "images" / f"{image_id}.png").shape == (SIZE, SIZE, 3)
        points = np.array(record["landmarks"])
        assert points.shape == (68, 2)
        assert points.min() >= 0 and points.max() <= SIZE - 1, f"{image_id}: landmarks outside the frame"
        left, right, mouth = (record["boxes"][k] for k in ("left_eye", "right_eye", "mouth"))
        assert left[0] + left[2] <= right[0] - right[2] + 0.1 * SIZE, f"{image_id}: eye boxes overlap a lot"
        assert SIZE * 0.25 < left[0] < SIZE / 2 < right[0] < SIZE * 0.75, f"{image_id}: left_eye is image-left"
        assert abs(left[1] - right[1]) < 0.05 * SIZE and mouth[1] > max(left[1], right[1]) + 0.1 * SIZE
        assert min(left[2], right[2]) >= min_half * 1.4 - 0.01 and mouth[2] >= min_half - 0.01
        face_box = record["face_box"]
        assert face_box[0] < face_box[2] and face_box[1] < face_box[3]
    assert meta["ffhq256_00003"]["ffhq_id"] == 3 and meta["celeb256_idinvert_000001"]["ffhq_id"] is None
    receipt = json.loads((out / "receipt.json").read_text())
    assert receipt["stage"] == "align" and receipt["counts"]["passthrough"] == len(ALIGNED_FILES)
    assert not out.with_name(out.name + ".partial").exists()


def test_passthrough_landmarks_scale_with_the_image(aligned_run: tuple[Path, dict],
                                                    landmarker: FaceLandmarker) -> None:
    """A 1024 px face's landmarks, scaled to 256, land where dlib finds them on the stored 256 px image."""
    out, _ = aligned_run
    record = read_meta(out)["ffhq1024_00000"]
    stored = load_rgb(out / "images" / "ffhq1024_00000.png")
    redetected = landmarker.landmarks(stored, landmarker.detect(stored)[0])
    error = np.hypot(*(redetected - np.array(record["landmarks"])).T).mean()
    assert error < 0.02 * SIZE


def test_wild_photos_are_aligned_or_rejected(wild_run: tuple[Path, dict]) -> None:
    out, summary = wild_run
    meta, rejects = read_meta(out), read_rejects(out)
    assert sorted(meta) == ["rotated", "wild_single"]
    assert {k: v["alignment"] for k, v in meta.items()} == {"rotated": "ffhq", "wild_single": "ffhq"}
    assert rejects["several"]["reason"] == alignment.REJECT_SEVERAL_FACES
    assert rejects["blank"]["reason"] == alignment.REJECT_NO_FACE
    assert rejects["tiny"]["reason"] == alignment.REJECT_TOO_SMALL
    assert {row["stage"] for key, row in rejects.items() if key != "broken"} == {"align"}
    assert rejects["broken"]["stage"] == "acquire", "acquire's rejects are carried over"
    assert summary["rejected_by_reason"] == {"face too small": 1, "no face": 1, "several faces": 1}
    assert summary["kept"] == 2 and summary["aligned"] == 2 and summary["rejected_earlier"] == 1
    assert sorted(p.name for p in (out / "images").iterdir()) == ["rotated.png", "wild_single.png"]


def test_aligned_output_matches_redetected_landmarks(wild_run: tuple[Path, dict],
                                                     landmarker: FaceLandmarker) -> None:
    out, _ = wild_run
    meta = read_meta(out)
    for image_id in ("rotated", "wild_single"):
        image = load_rgb(out / "images" / f"{image_id}.png")
        assert image.shape == (SIZE, SIZE, 3)
        boxes = landmarker.detect(image)
        assert len(boxes) == 1, image_id
        redetected = landmarker.landmarks(image, boxes[0])
        stored = np.array(meta[image_id]["landmarks"])
        error = np.hypot(*(redetected - stored).T).mean()
        assert error < 0.02 * SIZE, f"{image_id}: stored landmarks off by {error:.2f} px on average"
        left, right = meta[image_id]["boxes"]["left_eye"], meta[image_id]["boxes"]["right_eye"]
        assert abs(left[1] - right[1]) < 0.03 * SIZE, f"{image_id}: eyes not level after alignment"
        # Fed again, the aligned output is recognised as already aligned.
        again = alignment.align_image(image, landmarker, size=SIZE, min_face_size=48, tolerance=0.08)
        assert again.alignment == "passthrough", image_id
        np.testing.assert_array_equal(again.image, image)


def test_output_is_byte_identical_for_any_worker_count(wild_raw: Path, wild_run: tuple[Path, dict]) -> None:
    out1, _ = wild_run
    out2 = wild_raw.parent / "aligned_w2"
    align.run(make_params(workers=2), wild_raw, out2)

    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    first, second = files(out1), files(out2)
    assert sorted(first) == sorted(second)
    for name in first:
        assert first[name] == second[name], f"{name} differs between 1 and 2 workers"


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dlfp acquire"):
        align.run(make_params(), tmp_path / "nothing", tmp_path / "out", workers=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cnn_detector_passes_aligned_faces_through(tmp_path: Path) -> None:
    names = ALIGNED_FILES[:3]
    raw = write_raw(tmp_path / "raw", {Path(n).stem: load_rgb(FACES / n) for n in names})
    summary = align.run(make_params(detector="cnn"), raw, tmp_path / "out", workers=1)
    assert summary["passthrough"] == len(names)


def test_faces_lists_every_large_face_with_its_template_points(landmarker: FaceLandmarker) -> None:
    """What `dlfp restore` reuses on own photos: all faces of a group photo, each with 5 template points."""
    photo = load_rgb(WILD / WILD_SEVERAL)
    faces = landmarker.faces(photo, min_face_size=48)
    assert len(faces) == 3
    for box, points in faces:
        assert box.side >= 48
        five = template_points(points)
        assert five[0, 0] < five[1, 0] and five[3, 0] < five[4, 0], "left/right as on the template"
        assert box.left <= five[2, 0] <= box.right and box.top <= five[2, 1] <= box.bottom


HOG_MISS = "ffhq256_00112.jpg"  # a real aligned FFHQ face that dlib's HOG detector does not find


def test_cnn_fallback_finds_faces_hog_misses(landmarker: FaceLandmarker) -> None:
    rgb = load_rgb(FACES / HOG_MISS)
    assert landmarker.detect(rgb) == []
    with pytest.raises(alignment.FaceRejected) as rejected:
        alignment.align_image(rgb, landmarker, size=SIZE, min_face_size=48, tolerance=0.12)
    assert rejected.value.reason == alignment.REJECT_NO_FACE
    with_fallback = FaceLandmarker("hog", 1, cnn_fallback=True)
    face = alignment.align_image(rgb, with_fallback, size=SIZE, min_face_size=48, tolerance=0.12)
    assert face.face_box.detector == "cnn"
    assert face.alignment == alignment.ALIGNMENT_PASSTHROUGH
    assert align.face_record(face)["detector"] == "cnn"
