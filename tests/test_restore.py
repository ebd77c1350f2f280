"""Stage `restore`: baselines byte-identical, bicubic from the logged LQ size, gfpgan deterministic or 'not run'."""

from __future__ import annotations

import json
from pathlib import Path

import _dlfp_test_faces as faces  # tests/_faces.py, registered by conftest.py
import _dlfp_test_prereq as prereq  # tests/_prereq.py, registered by conftest.py
import _dlfp_test_tars as tars  # tests/_tars.py, registered by conftest.py
import cv2
import numpy as np
import pytest
import torch

from dlfp import restorers
from dlfp.io.hashing import file_digest
from dlfp.io.images import decode_png_bytes
from dlfp.models.checkpoints import save_official
from dlfp.models.gfpgan import GFPGANv1Clean
from dlfp.stages import restore as restore_stage

SIZE = faces.MINI_SIZE  # GT side; the tiny model below runs at 64 and is resized in and out
FACE_COUNT = faces.MINI_COUNT
TINY = dict(out_size=64, num_style_feat=64, channel_multiplier=1, num_mlp=2, narrow=0.25)
PRESETS = faces.MINI_PRESETS


def _params(tmp: Path, weights: Path | None = None, restorer_list: tuple[str, ...] | None = None):
    """The shared mini project's parameters; the restorers of params.yaml unless `restorer_list` is given."""
    restore = dict(weights=str(weights or tmp / "no-such-weights.pth"), batch_size=2, device="cpu", threads=1)
    if restorer_list is not None:
        restore["restorers"] = list(restorer_list)
    return faces.mini_params(restore=restore)


@pytest.fixture
def pairs_dir(mini_project: Path) -> Path:
    """The shared mini project's pairs (conftest.py): real FFHQ faces through the real shard and degrade stages."""
    return mini_project / "pairs"


def _restored(out: Path, restorer: str, preset: str) -> dict[str, dict[str, bytes]]:
    merged: dict[str, dict[str, bytes]] = {}
    for path in sorted((out / restorer / preset).glob("restored-*.tar")):
        merged.update(tars.tar_samples(path))
    return merged


def _pairs(pairs: Path, preset: str) -> dict[str, dict[str, bytes]]:
    merged: dict[str, dict[str, bytes]] = {}
    for path in sorted((pairs / "test" / preset).glob("pairs-*.tar")):
        merged.update(tars.tar_samples(path))
    return merged


def _tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    return save_official(GFPGANv1Clean(**TINY), path)


# ------------------------------------------------------------------------------------------ baselines
def test_bicubic_goes_through_the_logged_lq_size() -> None:
    rng = np.random.default_rng(0)
    lq = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    out = restorers.restore_bicubic(lq, [10, 10])
    expected = cv2.resize(cv2.resize(lq, (10, 10), interpolation=cv2.INTER_AREA), (40, 40),
                          interpolation=cv2.INTER_CUBIC)
    assert out.shape == lq.shape and out.dtype == np.uint8 and np.array_equal(out, expected)
    # a smooth image seen at full size is left (almost) as is
    assert np.abs(restorers.restore_bicubic(np.full((40, 40, 3), 77, np.uint8), [40, 40]).astype(int) - 77).max() == 0


def test_missing_weights_is_not_run_and_baselines_are_written_byte_identically(pairs_dir: Path,
                                                                               tmp_path: Path) -> None:
    params = _params(tmp_path)
    first, second = tmp_path / "restored_a", tmp_path / "restored_b"
    summary = restore_stage.run(params, pairs_dir, first)
    restore_stage.run(params, pairs_dir, second)
    index = json.loads((first / "index.json").read_text())
    receipt = json.loads((first / "receipt.json").read_text())
    gfpgan = index["restorers"]["gfpgan"]
    assert gfpgan["restorer"] == "gfpgan" and gfpgan["status"] == "not run"
    assert "no-such-weights.pth missing" in gfpgan["reason"]
    assert receipt["not_run"]["gfpgan"] == gfpgan["reason"] and "gfpgan" in summary["not_run"]
    assert not (first / "gfpgan").exists()

    tars = sorted(p.relative_to(first).as_posix() for p in first.rglob("*.tar"))
    assert tars == sorted(p.relative_to(second).as_posix() for p in second.rglob("*.tar"))
    assert len(tars) == 2 * len(PRESETS) * 2  # 2 restorers x presets x 2 shards (5 faces, 3 per shard)
    assert all(file_digest(first / t) == file_digest(second / t) for t in tars)
    assert (first / "index.json").read_bytes() == (second / "index.json").read_bytes()

    for preset in PRESETS:
        pairs = _pairs(pairs_dir, preset)
        lq_restored, bicubic = _restored(first, "lq", preset), _restored(first, "bicubic", preset)
        assert list(lq_restored) == sorted(pairs) == list(bicubic)
        assert index["restorers"]["lq"]["presets"][preset]["count"] == FACE_COUNT
        differs = 0
        for key, pair in pairs.items():
            lq = decode_png_bytes(pair["lq.png"])
            assert np.array_equal(decode_png_bytes(lq_restored[key]["restored.png"]), lq)
            meta = json.loads(pair["json"])
            bic = decode_png_bytes(bicubic[key]["restored.png"])
            assert np.array_equal(bic, restorers.restore_bicubic(lq, meta["degradation"]["lq_size"]))
            differs += not np.array_equal(bic, lq)
            assert json.loads(bicubic[key]["json"]) == {"id": key, "preset": preset, "restorer": "bicubic"}
        assert differs == FACE_COUNT  # every bicubic face differs from the LQ it came from
    timings = (first / "timings.csv").read_text().splitlines()
    assert timings[0] == "restorer,preset,id,seconds" and len(timings) == 1 + 2 * len(PRESETS) * FACE_COUNT


# --------------------------------------------------------------------------------------------- gfpgan
def test_infer_config_reads_the_architecture_from_the_shapes() -> None:
    torch.manual_seed(0)
    state = GFPGANv1Clean(**TINY).state_dict()
    config = restorers.infer_gfpgan_config(state)
    assert config == {**TINY, "different_w": True, "sft_half": True}
    with pytest.raises(ValueError, match="not a GFPGANv1Clean"):
        restorers.infer_gfpgan_config({"x": torch.zeros(1)})


def test_gfpgan_restorer_is_deterministic_and_resizes_to_the_model(pairs_dir: Path, tmp_path: Path) -> None:
    weights = _tiny_checkpoint(tmp_path / "tiny.pth")
    params = _params(tmp_path, weights, ("gfpgan",))
    first, second = tmp_path / "gfp_a", tmp_path / "gfp_b"
    restore_stage.run(params, pairs_dir, first)
    restore_stage.run(params, pairs_dir, second)
    index = json.loads((first / "index.json").read_text())
    entry = index["restorers"]["gfpgan"]
    assert entry["status"] == "ok" and entry["description"]["arch"]["out_size"] == TINY["out_size"]
    assert entry["description"]["backend"] == "torch"  # params restore.backend default: byte-identical tars
    receipt = json.loads((first / "receipt.json").read_text())
    assert receipt["backends"] == {"gfpgan": {"backend": "torch", "backend_version": f"torch {torch.__version__}"}}
    for preset in PRESETS:
        a, b = _restored(first, "gfpgan", preset), _restored(second, "gfpgan", preset)
        assert list(a) == sorted(_pairs(pairs_dir, preset))
        for key in a:
            image = decode_png_bytes(a[key]["restored.png"])
            assert image.shape == (SIZE, SIZE, 3)
            assert np.array_equal(image, decode_png_bytes(b[key]["restored.png"]))

    # the same faces through the model by hand: fixed noise, bilinear to 64 and back
    model = GFPGANv1Clean(**TINY)
    model.load_state_dict(torch.load(weights, weights_only=True)["params_ema"])
    model.eval().fixed_noise = True
    restorer = restorers.build_restorer("gfpgan", weights=weights, batch_size=2, device="cpu")
    lq = [decode_png_bytes(s["lq.png"]) for s in _pairs(pairs_dir, PRESETS[0]).values()][:2]
    x = torch.from_numpy(np.stack(lq)).permute(0, 3, 1, 2).float() / 127.5 - 1
    x = torch.nn.functional.interpolate(x, (64, 64), mode="bilinear", align_corners=False, antialias=True)
    with torch.inference_mode():
        out = model(x, return_rgb=False)[0].clamp(-1, 1)
    out = torch.nn.functional.interpolate(out, (SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)
    expected = ((out + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    got = restorer.restore_batch(lq, [{}, {}])
    assert all(np.abs(g.astype(int) - e.astype(int)).max() <= 1 for g, e in zip(got, expected, strict=True))


@pytest.mark.slow  # one OpenVINO conversion of the tiny model
def test_restore_backend_openvino_runs_and_is_recorded(pairs_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from dlfp import inference

    prereq.require(inference.openvino_installed(), f"OpenVINO not installed ({inference.OPENVINO_EXTRA})")
    monkeypatch.setenv("DLFP_CACHE", str(tmp_path / "cache"))
    weights = _tiny_checkpoint(tmp_path / "tiny.pth")
    params = _params(tmp_path, weights, ("gfpgan",))
    restore_stage.run(params, pairs_dir, tmp_path / "torch")
    params = params.model_copy(update={"restore": params.restore.model_copy(update={"backend": "openvino"})})
    restore_stage.run(params, pairs_dir, tmp_path / "openvino")
    index = json.loads((tmp_path / "openvino" / "index.json").read_text())
    assert index["restorers"]["gfpgan"]["description"]["backend"] == "openvino"
    receipt = json.loads((tmp_path / "openvino" / "receipt.json").read_text())
    assert receipt["backends"]["gfpgan"]["backend_version"].startswith("openvino ")
    for preset in PRESETS:
        a, b = _restored(tmp_path / "torch", "gfpgan", preset), _restored(tmp_path / "openvino", "gfpgan", preset)
        assert list(a) == list(b)
        for key in a:
            apart = np.abs(decode_png_bytes(a[key]["restored.png"]).astype(int)
                           - decode_png_bytes(b[key]["restored.png"]).astype(int))
            assert apart.max() <= 1 and apart.mean() < 0.01


def test_arch_from_params_that_does_not_fit_the_checkpoint_fails_loudly(tmp_path: Path) -> None:
    weights = _tiny_checkpoint(tmp_path / "tiny.pth")
    with pytest.raises(RuntimeError, match="does not fit"):
        restorers.build_restorer("gfpgan", weights=weights, arch={"narrow": 0.5}, device="cpu")
    # the train stage's sidecar (<stem>.json, {"config": ...}) is read; params still win over it
    (tmp_path / "tiny.json").write_text(json.dumps({"config": {**TINY, "input_is_latent": False,
                                                               "fix_decoder": True}}))
    restorer = restorers.build_restorer("gfpgan", weights=weights, device="cpu")
    assert restorer.description["arch"]["input_is_latent"] is False
    restorer = restorers.build_restorer("gfpgan", weights=weights, arch={"input_is_latent": True}, device="cpu")
    assert restorer.description["arch"]["input_is_latent"] is True
