"""Inference backends: OpenVINO's output equals torch's on real faces, compiles once per key, and is optional."""

from __future__ import annotations

import logging
from pathlib import Path

import _dlfp_test_prereq as prereq  # tests/_prereq.py, registered by conftest.py
import cv2
import numpy as np
import pytest
import torch
from _dlfp_test_faces import FACES  # tests/_faces.py, registered by conftest.py

from dlfp import inference
from dlfp.io.images import load_rgb
from dlfp.models.gfpgan import GFPGANv1Clean

SIZE = 64
TINY = dict(out_size=SIZE, num_style_feat=64, channel_multiplier=1, num_mlp=2, narrow=0.25)
TOLERANCE = 1e-4  # max abs, on [-1, 1] images

needs_openvino = prereq.needs(inference.openvino_installed(), f"OpenVINO not installed ({inference.OPENVINO_EXTRA})")


def _model(seed: int = 0) -> GFPGANv1Clean:
    torch.manual_seed(seed)
    model = GFPGANv1Clean(**TINY).eval()
    model.fixed_noise = True
    return model


def _faces(count: int = 3) -> torch.Tensor:
    paths = sorted(FACES.glob("ffhq*.jpg"))[:count]
    prereq.require(len(paths) == count, f"fewer than {count} faces in {FACES}")
    images = np.stack([cv2.resize(load_rgb(path), (SIZE, SIZE), interpolation=cv2.INTER_AREA) for path in paths])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@needs_openvino
def test_openvino_equals_torch_on_real_faces(tmp_path: Path) -> None:
    model, faces = _model(), _faces()
    expected = inference.torch_forward(model)(faces)
    assert inference.resolve_backend("openvino", "cpu") == "openvino"
    got = inference.openvino_forward(model, "w0", SIZE, 1, tmp_path)(faces)
    assert got.shape == expected.shape == faces.shape
    assert float((got - expected).abs().max()) <= TOLERANCE
    assert float((expected - faces).abs().max()) > 10 * TOLERANCE  # the network did change the faces


@needs_openvino
def test_the_compiled_model_is_cached_per_weights_and_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, faces = _model(), _faces(1)
    first = inference.openvino_forward(model, "w0", SIZE, 1, tmp_path)(faces)
    entries = list((tmp_path / inference.CACHE_SUBDIR).iterdir())
    assert len(entries) == 1 and (entries[0] / inference.MODEL_FILE).is_file()

    def no_conversion(*args: object) -> Path:
        raise AssertionError("converted again although the cache holds this model")

    monkeypatch.setattr(inference, "convert_to_openvino", no_conversion)
    assert torch.equal(inference.openvino_forward(model, "w0", SIZE, 1, tmp_path)(faces), first)
    # Other weights are another entry (and need a conversion).
    with pytest.raises(AssertionError, match="converted again"):
        inference.openvino_forward(_model(seed=1), "w1", SIZE, 1, tmp_path)
    assert inference.cache_key("w0", SIZE) != inference.cache_key("w1", SIZE) != inference.cache_key("w1", 2 * SIZE)


def test_a_missing_openvino_falls_back_to_torch_with_one_log_line(monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(inference, "openvino_installed", lambda: False)
    with caplog.at_level(logging.INFO, logger=inference.__name__):
        assert inference.resolve_backend("openvino", "cpu") == "torch"
    assert len(caplog.records) == 1 and inference.OPENVINO_EXTRA in caplog.text
    caplog.clear()
    assert inference.resolve_backend("auto", "cpu") == "torch" and not caplog.records  # auto: silent
    assert inference.resolve_backend("openvino", "cuda") == "torch"
    with pytest.raises(ValueError, match="unknown inference backend 'tensorrt'"):
        inference.resolve_backend("tensorrt", "cpu")


def test_auto_picks_openvino_on_the_cpu_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inference, "openvino_installed", lambda: True)
    assert inference.resolve_backend("auto", "cpu") == "openvino"
    assert inference.resolve_backend("auto", "cuda") == "torch"
    assert inference.resolve_backend("torch", "cpu") == "torch"


@pytest.mark.slow  # one OpenVINO conversion
@needs_openvino
def test_the_gfpgan_restorer_runs_on_the_backend_it_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The restore stage's and `dlfp restore`'s restorer: OpenVINO's 8-bit faces within one level of torch's."""
    from dlfp.models.checkpoints import save_official
    from dlfp.restorers import build_restorer

    monkeypatch.setenv("DLFP_CACHE", str(tmp_path / "cache"))
    weights = save_official(_model(), tmp_path / "tiny.pth")
    faces = [np.ascontiguousarray(image) for image in
             ((_faces(2).permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()]
    runs = {name: build_restorer("gfpgan", weights=weights, batch_size=2, device="cpu", backend=name, threads=1)
            for name in ("torch", "openvino")}
    assert {name: restorer.description["backend"] for name, restorer in runs.items()} == {
        "torch": "torch", "openvino": "openvino"}
    assert runs["openvino"].description["backend_version"].startswith("openvino ")
    outputs = {name: np.stack(restorer.restore_batch(faces, [{}, {}])) for name, restorer in runs.items()}
    apart = np.abs(outputs["torch"].astype(np.int16) - outputs["openvino"].astype(np.int16))
    assert apart.max() <= 1 and apart.mean() < 0.01
    assert np.abs(outputs["torch"].astype(np.int16) - np.stack(faces)).mean() > 1  # the network changed them
    assert len(list((tmp_path / "cache" / inference.CACHE_SUBDIR).iterdir())) == 1
