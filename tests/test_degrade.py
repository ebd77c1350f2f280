"""Degradation model (gfpgan-spec section 3) and the `degrade` stage: determinism, ranges, pairs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import _dlfp_test_prereq as prereq  # tests/_prereq.py, registered by conftest.py
import _dlfp_test_tars as tars  # tests/_tars.py, registered by conftest.py
import cv2
import numpy as np
import pytest
import yaml
from _dlfp_test_faces import FACES  # tests/_faces.py, registered by conftest.py

from dlfp import degradation as dg
from dlfp.io.hashing import file_digest
from dlfp.io.images import decode_png_bytes, encode_png, load_rgb
from dlfp.params import DegradationParams, parse_params
from dlfp.shards.format import SPLITS, pair_presets, split_records
from dlfp.shards.local import iter_samples, read_index
from dlfp.stages import degrade as degrade_stage
from dlfp.stages import shard as shard_stage

REPO = Path(__file__).resolve().parents[1]
SMALL = 64
DRAWS = 400  # samples for the distribution checks; tolerances below are about 4 standard errors
PAPER = DegradationParams()
# A preset that isolates one step: no blur to speak of, no resize, lossless-ish JPEG, no colour steps.
IDENTITY = dict(blur_sigma=(0.1, 0.1), downscale=(1.0, 1.0), noise_sigma=(0.0, 0.0), jpeg_quality=(100, 100),
                color_shift_prob=0.0, gray_prob=0.0, jitter_prob=0.0)


def _face(size: int = SMALL, index: int = 0) -> np.ndarray:
    paths = sorted(FACES.glob("*.png"))
    if not paths:
        prereq.missing(f"no faces in {FACES}")
    rgb = load_rgb(paths[index % len(paths)])
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)


def _yaml_presets() -> dict[str, DegradationParams]:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    return parse_params(raw).degrade.presets


def _draws(params: DegradationParams, count: int = DRAWS) -> list[dict]:
    gt = _face()
    return [dg.degrade(gt, params, seed)[1] for seed in range(count)]


def _inside(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


# ------------------------------------------------------------------------------------ determinism
def test_same_seed_same_bytes_and_different_seed_differs() -> None:
    gt = _face(96)
    first, applied = dg.degrade(gt, PAPER, 1234)
    second, applied_again = dg.degrade(gt, PAPER, 1234)
    assert encode_png(first) == encode_png(second)
    assert applied == applied_again
    others = [dg.degrade(gt, PAPER, seed)[0] for seed in (1235, 99, 7)]
    assert all(not np.array_equal(first, other) for other in others)
    assert first.shape == gt.shape and first.dtype == np.uint8


def test_result_does_not_depend_on_call_order_or_opencv_threads() -> None:
    gt = _face(128)
    previous = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        single = [dg.degrade(gt, PAPER, seed)[0] for seed in range(6)]
        cv2.setNumThreads(4)
        threaded = [dg.degrade(gt, PAPER, seed)[0] for seed in reversed(range(6))][::-1]
    finally:
        cv2.setNumThreads(previous)
    assert all(np.array_equal(a, b) for a, b in zip(single, threaded, strict=True))


def test_sample_seed_is_stable_and_separates_tags_and_ids() -> None:
    seed = dg.sample_seed(20260101, "face_001", "paper")
    assert seed == dg.sample_seed(20260101, "face_001", "paper")
    assert 0 <= seed < 2**63
    others = {dg.sample_seed(20260101, "face_001", "mild"), dg.sample_seed(20260101, "face_002", "paper"),
              dg.sample_seed(20260102, "face_001", "paper"), dg.sample_seed(20260101, "face_001", "epoch3")}
    assert seed not in others and len(others) == 4


# ---------------------------------------------------------------------------------- logged scalars
def _check_ranges(applied: dict, params: DegradationParams, size: int = SMALL) -> None:
    """Lengths against the preset's ranges scaled to `size` (the preset's reference size, if any)."""
    scale = applied["size_scale"]
    assert scale == (None if params.reference_size is None else size / params.reference_size)
    blur_sigma = params.blur_sigma if scale is None else (params.blur_sigma[0] * scale, params.blur_sigma[1] * scale)
    downscale = params.downscale if scale is None else (max(1.0, params.downscale[0] * scale),
                                                        max(1.0, params.downscale[1] * scale))
    assert applied["kernel"] in ("iso", "aniso")
    assert applied["kernel_size"] == (params.kernel_size if scale is None else
                                      2 * math.floor(params.kernel_size // 2 * scale + 0.5) + 1)
    assert _inside(applied["sigma_x"], blur_sigma) and _inside(applied["sigma_y"], blur_sigma)
    assert -math.pi <= applied["angle"] <= math.pi
    if applied["kernel"] == "iso":
        assert applied["sigma_x"] == applied["sigma_y"] and applied["angle"] == 0.0
    assert _inside(applied["scale"], downscale)
    assert _inside(applied["noise_sigma"], params.noise_sigma)
    assert isinstance(applied["jpeg_quality"], int) and _inside(applied["jpeg_quality"], params.jpeg_quality)
    if applied["color_shift"] is not None:
        assert len(applied["color_shift"]) == 3
        assert all(_inside(value, params.color_shift) for value in applied["color_shift"])
    assert isinstance(applied["gray"], bool)
    if applied["jitter"] is not None:
        jitter = applied["jitter"]
        for name in dg.JITTER_NAMES:
            assert _inside(jitter[name], getattr(params, name)), name
        assert sorted(jitter["order"]) == sorted(dg.JITTER_NAMES)


def _only_plain_json(value: object) -> None:
    """Scalars, lists and dicts of plain Python types only: no numpy scalars or arrays slip into the log."""
    if isinstance(value, dict):
        for item in value.values():
            _only_plain_json(item)
    elif isinstance(value, list):
        for item in value:
            _only_plain_json(item)
    else:
        assert value is None or type(value) in (bool, int, float, str), type(value)


def test_every_logged_scalar_lies_in_its_preset_range() -> None:
    presets = {"default": PAPER, **_yaml_presets()}
    for name, params in presets.items():
        for applied in _draws(params, 60):
            _check_ranges(applied, params)
            _only_plain_json(applied)
            assert json.loads(json.dumps(applied)) == applied, name


def test_scalar_distributions_match_the_spec() -> None:
    params = PAPER.model_copy(update={"gray_prob": 0.5, "color_shift_prob": 0.5, "jitter_prob": 0.5})
    draws = _draws(params)
    scales = np.array([d["scale"] for d in draws])
    quality = np.array([d["jpeg_quality"] for d in draws])
    sigma = np.array([d["sigma_x"] for d in draws])
    noise = np.array([d["noise_sigma"] for d in draws])
    iso = np.array([d["kernel"] == "iso" for d in draws])
    gray = np.array([d["gray"] for d in draws])
    shift = np.array([d["color_shift"] is not None for d in draws])
    jitter = np.array([d["jitter"] is not None for d in draws])
    assert abs(scales.mean() - 4.4) < 0.45  # U(0.8, 8): sd 2.08
    assert abs(quality.mean() - 80.0) < 2.5  # U{60..100}: sd 11.8
    assert abs(sigma.mean() - 5.05) < 0.6  # U(0.1, 10): sd 2.86
    assert abs(noise.mean() - 10.0) < 1.2  # U(0, 20): sd 5.8
    assert quality.min() <= 62 and quality.max() >= 98
    for flags in (iso, gray, shift, jitter):
        assert abs(flags.mean() - 0.5) < 0.1
    # The optional steps are drawn independently (a shared seed per transform would couple them).
    assert abs((shift & jitter).mean() - 0.25) < 0.09
    assert abs((gray & shift).mean() - 0.25) < 0.09
    assert len({tuple(d["jitter"]["order"]) for d in draws if d["jitter"]}) > 12  # of 24 orders


def test_paper_preset_is_scaled_from_512_px_to_the_face_size() -> None:
    """At 128 px the paper preset's lengths are a quarter: the same pixels as the 512 px ranges written at 128."""
    paper = _yaml_presets()["paper"]
    assert paper.reference_size == 512
    gt = _face(128)
    fixed = {**IDENTITY, "jpeg_quality": (80, 80), "noise_sigma": (6.0, 6.0), "kernel_iso_prob": 0.0}
    at_512 = DegradationParams(**{**fixed, "blur_sigma": (8.0, 8.0), "downscale": (8.0, 8.0)}, reference_size=512)
    at_128 = DegradationParams(**{**fixed, "blur_sigma": (2.0, 2.0), "downscale": (2.0, 2.0)}, kernel_size=11)
    for seed in (1, 2):
        lq, applied = dg.degrade(gt, at_512, seed)
        expected, plain = dg.degrade(gt, at_128, seed)
        assert np.array_equal(lq, expected)
        assert applied["size_scale"] == 0.25 and plain["size_scale"] is None
        assert (applied["sigma_x"], applied["scale"], applied["kernel_size"], applied["lq_size"]) == (
            2.0, 2.0, 11, [64, 64])
    # A factor that would fall below 1 (the paper's LQ finer than a 128 px GT) leaves the LQ at full size.
    _, applied = dg.degrade(gt, at_512.model_copy(update={"downscale": (2.0, 2.0)}), 3)
    assert applied["scale"] == 1.0 and applied["lq_size"] == [128, 128]
    # At its own size the paper preset is the paper's ranges, unscaled.
    _, applied = dg.degrade(_face(512), at_512, 4)
    assert (applied["size_scale"], applied["sigma_x"], applied["kernel_size"], applied["lq_size"]) == (
        1.0, 8.0, 41, [64, 64])
    for draw in _draws(paper, 60):
        _check_ranges(draw, paper)


def test_presets_differ_in_severity() -> None:
    """Sanity of the presets: a harder preset moves the LQ further from the GT."""
    gt = _face(128).astype(np.float64)
    presets = _yaml_presets()
    error = {name: np.mean([np.abs(dg.degrade(gt.astype(np.uint8), presets[name], seed)[0] - gt).mean()
                            for seed in range(12)]) for name in ("mild", "moderate", "severe")}
    assert error["mild"] < error["moderate"] < error["severe"]


# ----------------------------------------------------------------------------------- single steps
def test_noise_sigma_sets_the_pixel_std() -> None:
    """Measured on luma: JPEG (even at q100) subsamples chroma 4:2:0, which smooths colour noise."""
    flat = np.full((128, 128, 3), 128, dtype=np.uint8)
    luma_gain = math.sqrt(0.299**2 + 0.587**2 + 0.114**2)  # independent noise per channel, mixed into Y
    measured = {}
    for sigma in (0.0, 5.0, 10.0):
        params = DegradationParams(**{**IDENTITY, "noise_sigma": (sigma, sigma)})
        lq, applied = dg.degrade(flat, params, 5)
        assert applied["noise_sigma"] == sigma
        luma = cv2.cvtColor(lq, cv2.COLOR_RGB2GRAY).astype(np.float64)
        measured[sigma] = luma.std()
    assert measured[0.0] < 0.5
    for sigma in (5.0, 10.0):
        assert abs(measured[sigma] - sigma * luma_gain) < 0.1 * sigma * luma_gain, measured


def test_jpeg_quality_is_an_int_and_fixed_range_is_exact() -> None:
    params = DegradationParams(**{**IDENTITY, "jpeg_quality": (70, 70)})
    _, applied = dg.degrade(_face(), params, 3)
    assert applied["jpeg_quality"] == 70 and type(applied["jpeg_quality"]) is int


def _colour_wheel(size: int = SMALL) -> np.ndarray:
    """Saturated hues around the centre, brightness rising outwards: strong, varied chroma."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    hue = (np.degrees(np.arctan2(yy, xx)) % 360 / 2).astype(np.uint8)  # OpenCV hue is 0..179
    value = np.clip(80 + 175 * np.hypot(yy, xx) / (size / 2), 0, 255).astype(np.uint8)
    hsv = np.dstack([hue, np.full_like(hue, 255), value])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _opencv_jpeg(rgb: np.ndarray, quality: int, swap: bool = True) -> np.ndarray:
    """OpenCV's JPEG round trip; swap=True feeds it BGR, the order it expects, and returns RGB."""
    image = rgb[..., ::-1] if swap else rgb
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(image), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    return decoded[..., ::-1] if swap else decoded


def test_jpeg_step_compresses_in_the_channel_order_opencv_expects() -> None:
    """With every other step an identity, degrade's LQ is exactly OpenCV's JPEG of the BGR image, back in RGB."""
    quality = 40
    params = DegradationParams(**{**IDENTITY, "jpeg_quality": (quality, quality)})
    for gt in (_colour_wheel(), _face()):
        lq, applied = dg.degrade(gt, params, 5)
        assert applied["jpeg_quality"] == quality
        assert np.array_equal(lq, _opencv_jpeg(gt, quality))
    wheel = _colour_wheel()
    swapped = _opencv_jpeg(wheel, quality, swap=False)  # what ImageCompression alone does to an RGB array
    assert np.abs(swapped.astype(int) - _opencv_jpeg(wheel, quality).astype(int)).max() > 10


def test_identity_preset_keeps_the_image_and_downscale_sets_the_lq_size() -> None:
    gt = _face()
    lq, applied = dg.degrade(gt, DegradationParams(**IDENTITY), 11)
    assert np.array_equal(lq, _opencv_jpeg(gt, 100))  # only JPEG q100 remains
    _, applied = dg.degrade(gt, DegradationParams(**{**IDENTITY, "downscale": (4.0, 4.0)}), 11)
    assert applied["lq_size"] == [SMALL // 4, SMALL // 4]


def test_grey_preset_gives_equal_channels() -> None:
    params = PAPER.model_copy(update={"gray_prob": 1.0, "color_shift_prob": 1.0, "jitter_prob": 0.0})
    lq, applied = dg.degrade(_face(), params, 8)
    assert applied["gray"] is True
    assert np.array_equal(lq[..., 0], lq[..., 1]) and np.array_equal(lq[..., 1], lq[..., 2])


def test_blur_paths_equal_the_full_41x41_kernel() -> None:
    img = _face(96).astype(np.float32) / 255
    cases = [(0.1, 0.1, 0.0, True), (2.5, 2.5, 0.0, True), (10.0, 10.0, 0.0, True),
             (0.4, 6.0, 1.1, False), (9.0, 3.0, -2.5, False), (0.2, 0.3, 0.4, False)]
    for sigma_x, sigma_y, angle, iso in cases:
        kernel = dg.gaussian_kernel(41, sigma_x, sigma_y, angle).astype(np.float32)
        assert kernel.shape == (41, 41) and abs(kernel.sum() - 1) < 1e-5
        reference = cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
        ours = dg.blur(img, 41, sigma_x, sigma_y, angle, iso)
        assert np.abs(ours - reference).max() < 1e-5, (sigma_x, sigma_y, angle)


def test_anisotropic_kernel_is_oriented_by_the_angle() -> None:
    kernel = dg.gaussian_kernel(41, 8.0, 1.0, 0.0)
    assert kernel[20, 30] > kernel[30, 20]  # long axis along x
    rotated = dg.gaussian_kernel(41, 8.0, 1.0, math.pi / 2)
    assert rotated[30, 20] > rotated[20, 30]


def test_rejects_ranges_that_albumentations_would_misread() -> None:
    with pytest.raises(ValueError, match="no integer"):
        dg.degrade(_face(), PAPER.model_copy(update={"jpeg_quality": (70.2, 70.8)}), 0)
    with pytest.raises(ValueError, match="color_shift"):
        dg.degrade(_face(), PAPER.model_copy(update={"color_shift": (-300.0, 300.0)}), 0)


def test_rejects_non_rgb_uint8() -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        dg.degrade(np.zeros((8, 8), np.uint8), PAPER, 0)
    with pytest.raises(ValueError, match="uint8 RGB"):
        dg.degrade(np.zeros((8, 8, 3), np.float32), PAPER, 0)


# ------------------------------------------------------------------------------------------ stage
def _stage_params(workers: int) -> object:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["shard"].update(split="hash", fractions={"train": 0.0, "val": 0.5, "test": 0.5}, samples_per_shard=3)
    raw["degrade"]["workers"] = workers
    return parse_params(raw)


@pytest.fixture(scope="module")
def clean_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight real faces at 64..128 px, sharded by the real shard stage (into the val and test splits)."""
    root = tmp_path_factory.mktemp("degrade_stage")
    aligned = root / "aligned"
    (aligned / "images").mkdir(parents=True)
    lines = []
    for number in range(8):
        sample_id = f"face_{number:03d}"
        size = 64 if number % 2 else 128
        (aligned / "images" / f"{sample_id}.png").write_bytes(encode_png(_face(size, number * 37)))
        lines.append(json.dumps({"id": sample_id, "source": f"faces/{sample_id}.png", "licence": "test"}))
    (aligned / "meta.jsonl").write_text("\n".join(lines) + "\n")
    shard_stage.run(_stage_params(1), aligned, root / "shards")
    return root / "shards"


def test_stage_writes_pairs_for_every_preset(clean_shards: Path, tmp_path: Path) -> None:
    params = _stage_params(1)
    out = tmp_path / "pairs"
    summary = degrade_stage.run(params, clean_shards, out)
    index = json.loads((out / "index.json").read_text())
    shard_index = read_index(clean_shards)
    assert set(index["splits"]) == {"val", "test"} == set(summary["counts"])
    assert (out / "receipt.json").exists() and not (out.parent / "pairs.partial").exists()
    for split in ("val", "test"):
        clean = {s["__key__"]: s for s in iter_samples(clean_shards, split_records(shard_index, split))}
        assert len(clean) >= 2  # both splits hold faces, so both are really exercised
        presets = pair_presets(index, split)
        assert set(presets) == set(params.degrade.presets) == set(summary["counts"][split])
        expected_shards = [3] * (len(clean) // 3) + ([len(clean) % 3] if len(clean) % 3 else [])
        for name, entry in presets.items():
            assert entry["count"] == len(clean) and [s["count"] for s in entry["shards"]] == expected_shards
            assert entry["params"] == params.degrade.presets[name].model_dump(mode="json")
            reference = params.degrade.presets[name].reference_size
            assert entry["size_scaling"] == {"reference_size": reference, "data_size": params.data.size,
                                             "scale": None if reference is None else params.data.size / reference}
            seen = []
            for record in entry["shards"]:
                assert record["path"].startswith(f"{split}/{name}/pairs-") and file_digest(out / record["path"]) == \
                    record["sha256"]
                for key, sample in tars.tar_samples(out / record["path"]).items():
                    assert set(sample) == {"lq.png", "gt.png", "json"}
                    assert sample["gt.png"] == clean[key]["gt.png"]
                    meta = json.loads(sample["json"])
                    assert meta["id"] == key and meta["preset"] == name and meta["split"] == split
                    # the same seeding rule for val and test: (global seed, sample id, preset)
                    assert meta["sample_seed"] == dg.sample_seed(params.seed, key, name)
                    gt = decode_png_bytes(sample["gt.png"])
                    lq, applied = dg.degrade(gt, params.degrade.presets[name], meta["sample_seed"])
                    assert meta["degradation"] == applied
                    assert np.array_equal(decode_png_bytes(sample["lq.png"]), lq)
                    seen.append(key)
            assert seen == sorted(clean)


def test_stage_output_is_identical_for_one_and_two_workers(clean_shards: Path, tmp_path: Path) -> None:
    digests = []
    for workers in (1, 2):
        out = tmp_path / f"pairs_{workers}"
        degrade_stage.run(_stage_params(workers), clean_shards, out)
        digests.append({p.relative_to(out).as_posix(): file_digest(p) for p in sorted(out.rglob("*.tar"))})
        index = json.loads((out / "index.json").read_text())
        assert index == json.loads((tmp_path / "pairs_1" / "index.json").read_text())
    assert digests[0] == digests[1] and {path.split("/")[0] for path in digests[0]} == {"val", "test"}


def test_stage_names_missing_shards(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="index"):
        degrade_stage.run(_stage_params(1), tmp_path / "nowhere", tmp_path / "out")


def test_windows_cover_everything_in_order() -> None:
    windows = list(degrade_stage._windows(range(10), 4))
    assert [len(w) for w in windows] == [4, 4, 2] and sum(windows, []) == list(range(10))


HASH_SEED_BUILD = """
import sys
from pathlib import Path

import yaml

from dlfp.stages import degrade, shard
from dlfp.params import parse_params

params_file, aligned, shards_out, pairs_out = map(Path, sys.argv[1:])
params = parse_params(yaml.safe_load(params_file.read_text()))
shard.run(params, aligned, shards_out)
degrade.run(params, shards_out, pairs_out)
"""
HASH_SEED_FACES = 12
OTHER_HASH_SEED = "123"


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every artifact file (receipts name their input folders, which differ between the two builds)."""
    return {p.relative_to(folder).as_posix(): file_digest(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "receipt.json"}


def test_shards_and_pairs_do_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    """The Makefile pins PYTHONHASHSEED=0; a build under another hash seed (a subprocess) must give the same bytes,
    so no split, order or file name may come from str hashing (set or hash() order)."""
    aligned = tmp_path / "aligned"
    (aligned / "images").mkdir(parents=True)
    lines = []
    for number in range(HASH_SEED_FACES):
        sample_id = f"face_{number:03d}"
        (aligned / "images" / f"{sample_id}.png").write_bytes(encode_png(_face(64, number * 37)))
        lines.append(json.dumps({"id": sample_id, "source": f"faces/{sample_id}.png", "licence": "test"}))
    (aligned / "meta.jsonl").write_text("\n".join(lines) + "\n")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["shard"].update(split="hash", samples_per_shard=2)  # the default fractions: every split gets faces
    raw["degrade"]["workers"] = 1
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    here, there = tmp_path / "here", tmp_path / "there"
    shard_stage.run(params, aligned, here / "shards")
    degrade_stage.run(params, here / "shards", here / "pairs")
    other = OTHER_HASH_SEED if os.environ.get("PYTHONHASHSEED") != OTHER_HASH_SEED else "321"
    subprocess.run([sys.executable, "-c", HASH_SEED_BUILD, str(params_file), str(aligned), str(there / "shards"),
                    str(there / "pairs")], env={**os.environ, "PYTHONHASHSEED": other}, check=True,
                   capture_output=True, timeout=600)
    index = read_index(here / "shards")
    assert sum(1 for split in SPLITS if split_records(index, split)) >= 2  # a real split happened
    for name in ("shards", "pairs"):
        built_here = _digests(here / name)
        assert len(built_here) > 2 and built_here == _digests(there / name), name
