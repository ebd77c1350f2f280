"""Stage `evaluate`: pyiqa numbers against references, identity, landmarks, FD, 'not computed' reasons."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import _dlfp_test_faces as faces  # tests/_faces.py, registered by conftest.py
import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from dlfp.io.atomic import write_json_atomic
from dlfp.io.images import decode_png_bytes, encode_png, load_rgb
from dlfp.metrics import frechet, iqa
from dlfp.metrics import identity as idm
from dlfp.metrics import landmarks as lm
from dlfp.shards.format import ShardSetWriter, json_bytes, pair_presets
from dlfp.shards.local import iter_samples, read_index
from dlfp.stages import evaluate as stage
from dlfp.stages.evaluate import page_assets, scoring
from dlfp.stages.evaluate.summary import circularity

SIZE = faces.MINI_SIZE
FACE_COUNT = faces.MINI_COUNT
PRESETS = faces.MINI_PRESETS


def _params(tmp: Path, report: dict | None = None, **evaluate: object):
    """The shared mini project's parameters (restorers from params.yaml), evaluated on the CPU."""
    return faces.mini_params(report=report or {},
                             restore=dict(weights=str(tmp / "absent.pth"), device="cpu", threads=1),
                             evaluate=dict(device="cpu", threads=1, batch_size=4, headline_preset="mild", **evaluate))


@pytest.fixture(scope="module")
def empty_torch_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("torch_home")


@pytest.fixture(autouse=True)
def _no_pyiqa_weights(monkeypatch: pytest.MonkeyPatch, empty_torch_home: Path) -> None:
    """No pyiqa weight files anywhere: LPIPS, NIQE and FID must say 'not computed', never try the network."""
    monkeypatch.setenv("TORCH_HOME", str(empty_torch_home))


@pytest.fixture
def project(mini_project: Path) -> Path:
    """The shared mini project (conftest.py): real FFHQ faces at 128 px with dlib landmarks, through the real shard,
    degrade and restore stages."""
    return mini_project


def _fake_restored(pairs_dir: Path, out: Path, makers: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]],
                   descriptions: dict[str, dict] | None = None) -> Path:
    """A restore-stage folder whose 'restorers' return a function of (GT, LQ): GT copies, blank images..."""
    index = read_index(pairs_dir)
    entries = {}
    for name, make in makers.items():
        per_preset = {}
        for preset, entry in pair_presets(index, "test").items():
            writer = ShardSetWriter(out, f"{name}/{preset}/restored-{{:06d}}.tar", 3)
            for sample in iter_samples(pairs_dir, entry["shards"]):
                image = make(decode_png_bytes(sample["gt.png"]), decode_png_bytes(sample["lq.png"]))
                writer.write({"__key__": sample["__key__"], "restored.png": encode_png(image),
                              "json": json_bytes({"id": sample["__key__"], "preset": preset, "restorer": name})})
            shards_ = [record.__dict__ for record in writer.close()]
            per_preset[preset] = {"count": sum(s["count"] for s in shards_), "shards": shards_}
        entries[name] = {"restorer": name, "status": "ok", "presets": per_preset,
                         "description": (descriptions or {}).get(name, {})}
    write_json_atomic(out / "index.json", {"presets": sorted(pair_presets(index, "test")), "restorers": entries})
    return out


def _rows(out: Path) -> list[dict]:
    with open(out / "per_image.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------------------ library
def test_psnr_of_identical_images_is_the_documented_cap_and_ssim_is_one() -> None:
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    psnr = iqa.pair_scores(iqa.create_pyiqa_metric("psnr"), image, image)
    ssim = iqa.pair_scores(iqa.create_pyiqa_metric("ssim"), image, image)
    assert np.allclose(psnr, iqa.PSNR_CAP_DB) and np.allclose(ssim, 1.0, atol=1e-6)


def test_fast_ssim_equals_pyiqa_ssim() -> None:
    gts = [faces.resized(load_rgb(p), 96) for p in faces.face_paths(3)]
    rng = np.random.default_rng(0)
    noisy = [np.clip(cv2.GaussianBlur(g, (7, 7), 2).astype(int) + rng.integers(-20, 21, g.shape), 0, 255)
             .astype(np.uint8) for g in gts]
    x, y = iqa.to_unit_tensor(noisy), iqa.to_unit_tensor(gts)
    fast = iqa.pair_scores(iqa.ssim_pyiqa_equivalent, x, y)
    reference = iqa.pair_scores(iqa.create_pyiqa_metric("ssim"), x, y)
    assert np.all(fast < 0.9) and np.abs(fast - reference).max() < 1e-5
    infos = iqa.build_pyiqa_metrics("cpu", ssim_backend="pyiqa")
    assert infos["ssim"].settings["backend"] == "pyiqa" and infos["ssim"].compute is not iqa.ssim_pyiqa_equivalent


def test_missing_pyiqa_weights_are_named_and_downloads_refused(empty_torch_home: Path) -> None:
    reason = iqa.missing_weights_reason("lpips")
    assert reason.startswith("not computed: LPIPS_v0.1_alex-df73285e.pth missing from")
    assert str(empty_torch_home / "hub" / "pyiqa") in reason
    assert "niqe_modelparameters.mat missing" in iqa.missing_weights_reason("niqe")
    assert "pt_inception-2015-12-05-6726825d.pth missing" in iqa.missing_weights_reason("fid")
    assert iqa.missing_weights_reason("psnr") is None
    infos = iqa.build_pyiqa_metrics("cpu")
    assert not infos["lpips"].available and infos["lpips"].compute is None and infos["psnr"].available
    with pytest.raises(FileNotFoundError, match="LPIPS_v0.1_alex"):
        iqa.create_pyiqa_metric("lpips")
    from pyiqa.utils import download_util

    with iqa._offline_pyiqa(), pytest.raises(RuntimeError, match="refused a download"):
        download_util.load_file_from_url("https://example.invalid/weights.pth")
    assert not (empty_torch_home / "hub" / "pyiqa" / "weights.pth").exists()
    # the torchvision backbone is looked for in hub/checkpoints: with the LPIPS heads present, that file is named
    (empty_torch_home / "hub" / "pyiqa").mkdir(parents=True, exist_ok=True)
    heads = empty_torch_home / "hub" / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth"
    heads.write_bytes(b"")
    try:
        assert "alexnet-owt-7be5be79.pth missing from" in iqa.missing_weights_reason("lpips")
        assert str(empty_torch_home / "hub" / "checkpoints") in iqa.missing_weights_reason("lpips")
    finally:
        heads.unlink()


def test_frechet_distance_of_a_set_with_itself_is_zero_and_a_shift_adds_its_square() -> None:
    vectors = np.random.default_rng(0).normal(size=(60, 128)) * 0.05
    assert frechet.frechet_distance(vectors, vectors) == pytest.approx(0.0, abs=1e-6)
    shifted = frechet.frechet_distance(vectors, vectors + 0.01)
    assert shifted == pytest.approx(128 * 0.01**2, rel=1e-3)
    with pytest.raises(ValueError, match="at least 2"):
        frechet.frechet_distance(vectors[:1], vectors[:1])


def _axis(number: int, length: float = 1.0) -> np.ndarray:
    vector = np.zeros(128)
    vector[number] = length
    return vector


def test_rank1_counts_the_nearest_gt_and_copies_of_one_ffhq_id_are_one_person() -> None:
    # gallery: person A twice (two sizes of one FFHQ image: nearby descriptors), B, C, D on their own axes
    labels = {"a_256": idm.identity_label("a_256", {"ffhq_id": 17}),
              "a_1024": idm.identity_label("a_1024", {"ffhq_id": 17}), "b": idm.identity_label("b", {"ffhq_id": 3}),
              "c": idm.identity_label("c", {"ffhq_id": None}),
              "d": idm.identity_label("d", {})}
    assert labels["a_256"] == labels["a_1024"] and len(set(labels.values())) == 4
    gallery = {"a_256": _axis(0), "a_1024": _axis(0) + _axis(1, 0.2), "b": _axis(2), "c": _axis(3), "d": _axis(4)}
    probes = {
        "a_256": _axis(0) + _axis(1, 0.3),  # nearest GT is the other copy of A (0.1 vs 0.3): still correct
        "a_1024": _axis(0) + _axis(1, 0.25),
        "b": _axis(2, 0.8) + _axis(5, 0.2),  # 0.28 from B
        "c": _axis(3, 0.3) + _axis(4, 0.7),  # 0.99 from C, 0.42 from D: identified as D, wrong
        "d": _axis(4, 1.1),
    }
    names = list(gallery)
    correct = idm.rank1_correct(np.stack([probes[n] for n in names]), [labels[n] for n in names],
                              np.stack([gallery[n] for n in names]), [labels[n] for n in names])
    assert correct.tolist() == [True, True, True, False, True]  # 4 / 5
    # a nearer face of another person beats a farther copy of one's own: wrong
    assert not idm.rank1_correct(np.stack([_axis(2, 0.7) + _axis(0, 0.3)]), [labels["a_256"]],  # 0.42 vs 0.99
                               np.stack([gallery["a_256"], gallery["b"]]), [labels["a_256"], labels["b"]])[0]
    # a tie with another person counts as wrong
    assert not idm.rank1_correct(np.stack([_axis(0, 0.5) + _axis(2, 0.5)]), [labels["a_256"]],
                               np.stack([gallery["a_256"], gallery["b"]]), [labels["a_256"], labels["b"]])[0]


def test_wilson_interval_matches_published_values() -> None:
    low, high = idm.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=5e-4) and high == pytest.approx(0.9433, abs=5e-4)
    low, high = idm.wilson_interval(0, 20)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.1611, abs=5e-4)


def test_false_accept_rate_and_threshold_at_far_on_known_distances() -> None:
    impostors = np.random.default_rng(0).permutation(np.arange(1, 2001) / 2000)  # 0.0005 ... 1.0
    assert idm.false_accept_rate(impostors, 0.6) == pytest.approx(1199 / 2000)
    threshold = idm.threshold_at_far(impostors, 1e-3)  # two of 2000 may lie below it
    assert threshold == pytest.approx(0.0015) and idm.false_accept_rate(impostors, threshold) == pytest.approx(1e-3)
    assert idm.false_accept_rate(impostors, np.nextafter(threshold, 1.0)) > 1e-3  # the largest such threshold


def test_calibration_of_a_gallery_on_a_line() -> None:
    # 40 people 0.13 apart on one axis: pairs 1-4 steps apart (0.13-0.52) are below 0.6, 5 and more are not;
    # person 0 also has a second copy right beside it, which must not make an impostor pair with it
    gallery = np.stack([_axis(0, 0.13 * number) for number in range(40)] + [_axis(0, 0.0) + _axis(1, 0.01)])
    labels = [f"ffhq:{number}" for number in range(40)] + ["ffhq:0"]
    calibration = idm.calibrate(gallery, labels, resamples=50)
    pairs = 40 * 39 // 2 + 39
    assert calibration.impostor_pairs == pairs and calibration.identities == 40 and calibration.faces == 41
    # 150 pairs 1-4 steps apart, and the copy's 4 nearest people (0.13 ... 0.52 and its 0.01 offset)
    assert calibration.far_at_default == pytest.approx((39 + 38 + 37 + 36 + 4) / pairs)
    assert calibration.threshold_at_far == pytest.approx(0.13)  # FAR 1e-3 of 819 pairs: the smallest distance
    assert not calibration.resolvable and sum(calibration.histogram_counts) == pairs
    low, high = calibration.far_at_default_ci
    assert low < calibration.far_at_default < high


def test_identity_of_gt_with_itself_and_blank_landmarks(project: Path) -> None:
    mild = pair_presets(read_index(project / "pairs"), "test")["mild"]
    samples = list(iter_samples(project / "pairs", mild["shards"]))
    gts = [decode_png_bytes(s["gt.png"]) for s in samples]
    scorer = idm.IdentityScorer("cpu", batch_size=2)
    embeddings = scorer.embed(gts)
    scores = idm.identity_scores(embeddings, scorer.embed(gts))
    assert embeddings.shape == (FACE_COUNT, 128)
    assert np.all(scores["identity_distance"] == 0) and scores["identity_match"].mean() == 1.0
    assert np.allclose(scores["identity_angle_deg"], 0, atol=1e-3)
    landmarks = lm.LandmarkScorer(256)
    gt_points = np.asarray(json.loads(samples[0]["json"])["landmarks"])
    assert not landmarks.measure(np.zeros_like(gts[0]), gt_points).detected
    found = landmarks.measure(gts[0], gt_points)
    assert found.detected and found.nme < 0.1 and found.error_px > 0


# --------------------------------------------------------------------------------------------- stage
def test_stage_writes_every_metric_with_reasons_and_reference_numbers(project: Path, tmp_path: Path) -> None:
    params = _params(tmp_path)
    metrics_path = tmp_path / "reports" / "metrics.json"
    summary = stage.run(params, project / "pairs", project / "restored", tmp_path / "evaluation", metrics_path)
    rows = _rows(tmp_path / "evaluation")
    assert [tuple(row) for row in rows[:1]] == [scoring.COLUMNS]
    assert len(rows) == FACE_COUNT * len(PRESETS) * 2  # lq + bicubic (gfpgan not run)
    assert {(r["preset"], r["restorer"]) for r in rows} == {(p, n) for p in PRESETS for n in ("lq", "bicubic")}
    assert all(r["lpips"] == "" and r["niqe"] == "" and r["psnr"] != "" for r in rows)

    # PSNR of the LQ input against a numpy reference (RGB, data range 1)
    pairs = {(preset, s["__key__"]): s for preset in PRESETS for s in iter_samples(
        project / "pairs", pair_presets(read_index(project / "pairs"), "test")[preset]["shards"])}
    for row in (r for r in rows if r["restorer"] == "lq"):
        sample = pairs[(row["preset"], row["id"])]
        lq = decode_png_bytes(sample["lq.png"]).astype(np.float64) / 255
        gt = decode_png_bytes(sample["gt.png"]).astype(np.float64) / 255
        reference = 10 * math.log10(1 / (np.mean((lq - gt) ** 2) + 1e-8))
        assert abs(float(row["psnr"]) - reference) < 1e-3
        assert row["landmarks_detected"] in ("true", "false") and row["identity_match"] in ("true", "false")

    report = json.loads(metrics_path.read_text())
    assert set(report) == {*PRESETS, "split", "accuracy", "calibration", "colour_space"}
    assert report["split"] == "test"  # the default: the reported figures
    assert report["colour_space"] == {"psnr": "RGB", "ssim": "Y of YIQ"}
    for preset in PRESETS:
        assert set(report[preset]) == {"lq", "bicubic", "gfpgan"}
        assert report[preset]["gfpgan"]["status"] == "not run" and "absent.pth" in report[preset]["gfpgan"]["reason"]
        for name in ("lq", "bicubic"):
            entry = report[preset][name]
            for key in ("psnr", "ssim", "identity_match_rate", "identity_distance", "fd_dlib128"):
                assert isinstance(entry[key], float), (preset, name, key)
            assert isinstance(entry["landmark_nme"], float) or entry["landmark_nme"].startswith("not computed: no face")
            assert isinstance(entry["landmark_failures"], int) and entry["count"] == FACE_COUNT
            assert entry["lpips"].startswith("not computed: LPIPS_v0.1_alex-df73285e.pth missing")
            assert entry["niqe"].startswith("not computed: niqe_modelparameters.mat missing")
            assert entry["fid"].startswith("not computed: pt_inception")
            mine = [r for r in rows if r["preset"] == preset and r["restorer"] == name]
            rate = np.mean([r["identity_match"] == "true" for r in mine])
            assert entry["identity_match_rate"] == pytest.approx(rate)
            assert (entry["identity_match_rate_ci_low"], entry["identity_match_rate_ci_high"]) == pytest.approx(
                idm.wilson_interval(round(rate * FACE_COUNT), FACE_COUNT), abs=1e-6)
            # rank-1 among the preset's 5 GT faces, from the per-image rows, with its Wilson interval
            hits = sum(r["rank1_correct"] == "true" for r in mine)
            assert all(r["rank1_correct"] in ("true", "false") for r in mine)
            assert entry["rank1_accuracy"] == pytest.approx(hits / FACE_COUNT) and entry["rank1_correct"] == hits
            assert (entry["rank1_accuracy_ci_low"], entry["rank1_accuracy_ci_high"]) == pytest.approx(
                idm.wilson_interval(hits, FACE_COUNT), abs=1e-6)
            assert entry["gallery_faces"] == FACE_COUNT == entry["gallery_identities"]
            threshold = report["calibration"][preset]["threshold_at_far_target"]
            at_far = sum(float(r["identity_distance"]) < threshold for r in mine) / FACE_COUNT
            assert entry["identity_match_rate_at_far"] == pytest.approx(at_far)
            assert entry["identity_metric_circularity"] == "no: not a trained model"
            assert entry["landmark_failures"] == sum(r["landmarks_detected"] == "false" for r in mine)
        calibration = report["calibration"][preset]
        assert calibration["impostor_pairs"] == FACE_COUNT * (FACE_COUNT - 1) // 2 and calibration["threshold"] == 0.6
        assert calibration["far_target"] == 1e-3 and calibration["far_target_resolvable"] is False
        assert "cannot be resolved" in calibration["note"]
        assert 0.0 <= calibration["far_at_threshold"] <= 1.0
    accuracy = report["accuracy"]
    assert accuracy["target"] == 0.5 and accuracy["restorer"] == "gfpgan" and accuracy["preset"] == "mild"
    assert accuracy["value"].startswith("not computed: restorer gfpgan not run") and accuracy["meets_target"] is None
    assert accuracy["definition"].startswith("rank-1 identification") and accuracy["ci_low"] is None
    assert accuracy["calibration"] == report["calibration"]["mild"]
    assert summary["accuracy"] == accuracy
    saved = json.loads((tmp_path / "evaluation" / "summary.json").read_text())
    assert saved["metrics"]["ssim"]["test_y_channel"] is True and saved["metrics"]["psnr"]["status"] == "ok"
    assert saved["metrics"]["psnr"]["colour_space"] == "RGB" and saved["metrics"]["ssim"]["colour_space"] == "Y of YIQ"
    assert sum(saved["impostor_histograms"]["mild"]["counts"]) == FACE_COUNT * (FACE_COUNT - 1) // 2
    assert saved["metrics"]["lpips"]["status"].startswith("not computed")
    assert (tmp_path / "evaluation" / "receipt.json").exists()


def test_stage_writes_what_the_evaluation_page_shows(project: Path, tmp_path: Path) -> None:
    """Gallery, worst cases and timing come from the stage (the page only reads them): checked against the pairs,
    per_image.csv and the restore stage's timings.csv."""
    out = tmp_path / "evaluation"
    stage.run(_params(tmp_path, report={"pairs_per_preset": 2}), project / "pairs", project / "restored", out,
              tmp_path / "metrics.json")
    rows = {(r["preset"], r["restorer"], r["id"]): r for r in _rows(out)}
    presets = pair_presets(read_index(project / "pairs"), "test")

    gallery = json.loads((out / page_assets.GALLERY_NAME).read_text())
    assert [entry["preset"] for entry in gallery["presets"]] == list(presets)
    for entry in gallery["presets"]:
        first = [s["__key__"] for s in iter_samples(project / "pairs", presets[entry["preset"]]["shards"])][:2]
        assert [face["id"] for face in entry["faces"]] == first
        for face in entry["faces"]:
            assert [view["label"] for view in face["views"]] == ["LQ input", "bicubic", "GT"]  # gfpgan not run
            row = rows[(entry["preset"], "bicubic", face["id"])]
            assert face["views"][1]["caption"] == [f"PSNR (RGB) {float(row['psnr']):.2f} dB",
                                                   f"id distance {float(row['identity_distance']):.3f} "
                                                   f"({'match' if row['identity_match'] == 'true' else 'no match'})"]
            assert face["views"][2]["caption"] == []
            for view in face["views"]:
                with Image.open(out / page_assets.IMAGES_DIR / view["file"]) as image:
                    assert image.format == "JPEG" and image.size == (SIZE, SIZE)  # 128 px: below GALLERY_PX
                assert face["id"] not in view["file"]  # names of positions only

    worst = json.loads((out / page_assets.WORST_CASES_NAME).read_text())
    assert [entry["restorer"] for entry in worst["restorers"]] == ["lq", "bicubic"]
    for entry in worst["restorers"]:
        mine = sorted((r for r in rows.values() if r["restorer"] == entry["restorer"]),
                      key=lambda r: (-float(r["identity_distance"]), r["preset"], r["id"]))
        assert [(c["preset"], c["id"]) for c in entry["cases"]] == \
            [(r["preset"], r["id"]) for r in mine[:page_assets.WORST_PER_RESTORER]]
        assert [c["identity_distance"] for c in entry["cases"]] == \
            [float(r["identity_distance"]) for r in mine[:page_assets.WORST_PER_RESTORER]]
        labels = ["LQ input", "GT"] if entry["restorer"] == "lq" else ["LQ input", "bicubic", "GT"]
        for case in entry["cases"]:
            assert [view["label"] for view in case["views"]] == labels
            for view in case["views"]:
                with Image.open(out / page_assets.IMAGES_DIR / view["file"]) as image:
                    assert max(image.size) == page_assets.WORST_PX

    with open(project / "restored" / "timings.csv", newline="") as handle:
        seconds: dict[str, list[float]] = {}
        for row in csv.DictReader(handle):
            seconds.setdefault(row["restorer"], []).append(float(row["seconds"]))
    timing = json.loads((out / page_assets.TIMING_NAME).read_text())["seconds_per_image"]
    assert timing == pytest.approx({name: sum(values) / len(values) for name, values in seconds.items()})
    assert set(timing) == {"lq", "bicubic"}


def test_gt_copies_score_perfectly_and_blank_faces_are_counted_failures(project: Path, tmp_path: Path) -> None:
    restored = _fake_restored(project / "pairs", tmp_path / "restored",
                              {"gt": lambda gt, lq: gt, "blank": lambda gt, lq: np.zeros_like(gt)})
    params = _params(tmp_path, headline_restorer="gt")
    metrics_path = tmp_path / "metrics.json"
    stage.run(params, project / "pairs", restored, tmp_path / "evaluation", metrics_path)
    report = json.loads(metrics_path.read_text())
    for preset in PRESETS:
        assert set(report[preset]) == {"lq", "gt", "blank"}  # the LQ is added as "lq"
        perfect, blank = report[preset]["gt"], report[preset]["blank"]
        assert perfect["identity_match_rate"] == 1.0 and perfect["identity_distance"] == 0.0
        assert perfect["psnr"] == pytest.approx(iqa.PSNR_CAP_DB) and perfect["ssim"] == pytest.approx(1.0, abs=1e-6)
        assert perfect["fd_dlib128"] == pytest.approx(0.0, abs=1e-6)
        assert perfect["landmark_failures"] == 0 and perfect["landmark_nme"] < 0.1
        assert blank["landmark_failures"] == FACE_COUNT and blank["landmark_evaluated"] == FACE_COUNT
        assert blank["landmark_nme"] == f"not computed: no face found in any of {FACE_COUNT} images"
    rows = [r for r in _rows(tmp_path / "evaluation") if r["restorer"] == "blank"]
    assert len(rows) == FACE_COUNT * len(PRESETS)  # failures kept as rows, never dropped
    assert all(r["landmarks_detected"] == "false" and r["landmark_nme"] == "" for r in rows)
    assert report["accuracy"]["value"] == 1.0 and report["accuracy"]["meets_target"] is True
    assert report["accuracy"]["n"] == FACE_COUNT
    assert (report["accuracy"]["ci_low"], report["accuracy"]["ci_high"]) == pytest.approx(
        idm.wilson_interval(FACE_COUNT, FACE_COUNT), abs=1e-6)
    for preset in PRESETS:
        # a blank image has one descriptor for every face: it can be nearest to one GT face at most
        assert report[preset]["gt"]["rank1_accuracy"] == 1.0 and report[preset]["blank"]["rank1_accuracy"] <= 0.2


def _losses_active(folder: Path, identity_weight: float, identity_network: str | None) -> Path:
    """A train-stage model folder: weights, its <stem>.json sidecar and losses_active.json (as train writes it)."""
    folder.mkdir(parents=True)
    (folder / "gfpgan.pth").write_bytes(b"")
    (folder / "gfpgan.json").write_text(json.dumps({"config": {}}))
    (folder / "losses_active.json").write_text(json.dumps({"terms": {
        "pixel": {"weight": 1.0}, "perceptual": {"weight": 0.0, "network": None},
        "identity": {"weight": identity_weight, "network": identity_network, "source": "dlib .dat"}}}))
    return folder / "gfpgan.pth"


def test_training_with_the_scoring_network_is_said_next_to_the_accuracy(project: Path, tmp_path: Path) -> None:
    from dlfp import restorers

    circular = restorers.training_losses(_losses_active(tmp_path / "dlib_model", 1.0, "dlib"))
    independent = restorers.training_losses(_losses_active(tmp_path / "arcface_model", 10.0, "arcface"))
    official = tmp_path / "official" / "GFPGANv1.4.pth"
    official.parent.mkdir()
    (official.parent / "losses_active.json").write_text("{}")  # a stray record without the train stage's sidecar
    unknown = restorers.training_losses(official)
    assert circular["identity_loss"] == {"weight": 1.0, "network": "dlib"} and unknown.startswith("unknown: ")
    copy_gt = lambda gt, lq: gt  # noqa: E731
    restored = _fake_restored(project / "pairs", tmp_path / "restored",
                              {"gfpgan": copy_gt, "arcface": copy_gt, "official": copy_gt},
                              {"gfpgan": {"training_losses": circular}, "arcface": {"training_losses": independent},
                               "official": {"training_losses": unknown}})
    metrics_path = tmp_path / "metrics.json"
    stage.run(_params(tmp_path), project / "pairs", restored, tmp_path / "evaluation", metrics_path)
    report = json.loads(metrics_path.read_text())
    note = report["accuracy"]["identity_metric_circularity"]
    assert report["accuracy"]["restorer"] == "gfpgan" and note.startswith("yes: trained with dlib's face network")
    assert "identity loss weight 1" in note and str(tmp_path / "dlib_model" / "losses_active.json") in note
    for preset in PRESETS:
        assert report[preset]["gfpgan"]["identity_metric_circularity"] == note
        assert report[preset]["arcface"]["identity_metric_circularity"].startswith("no: no dlib-network loss")
        assert report[preset]["official"]["identity_metric_circularity"] == unknown
        assert report[preset]["lq"]["identity_metric_circularity"] == "no: not a trained model"


def test_circularity_verdicts_from_the_recorded_loss_networks(tmp_path: Path) -> None:
    from dlfp import restorers

    def losses(identity: tuple[float, str | None], perceptual: tuple[float, str | None]) -> dict:
        return {"training_losses": {"source": "m/losses_active.json",
                                    "identity_loss": {"weight": identity[0], "network": identity[1]},
                                    "perceptual_loss": {"weight": perceptual[0], "network": perceptual[1]}}}

    feature_loss = circularity("gfpgan", losses((0.0, None), (1.0, "dlib")))
    assert feature_loss.startswith("yes: ") and "perceptual loss (feature maps) weight 1" in feature_loss
    assert circularity("gfpgan", losses((0.0, "dlib"), (1.0, "vgg19"))).startswith("no: ")  # weight 0: unused
    assert circularity("bicubic", {}) == "no: not a trained model"
    assert circularity("gfpgan", {}).startswith("unknown: ")
    weights = _losses_active(tmp_path / "model", 1.0, "dlib")
    (weights.parent / "losses_active.json").write_text("{}")  # no "terms": a broken record is an error, not a guess
    with pytest.raises(ValueError, match="losses_active.json: unreadable loss record beside gfpgan.pth"):
        restorers.training_losses(weights)
