"""Inference backends for the restorer network: torch eager, or OpenVINO (the optional `dlfp[openvino]` extra).

Why: on a CPU the GFP-GAN forward is nearly all of `dlfp restore`'s time. OpenVINO's CPU plugin runs the same
graph (exported with `torch.export`, converted with `openvino.convert_model`) with its own fusions and thread
pinning. Its output equals torch's within 1e-4 (tests/test_inference.py); benchmarks/bench_models.py measures
the ratio side by side.

A compiled model is specific to the weights, the input shape and the versions that made it, so it is cached
under $DLFP_CACHE/openvino/<key>/ with key = sha256 of (weights digest, shape, OpenVINO and torch versions): only
the first run pays the conversion. The network always runs at batch 1 with a static shape (one conversion per
weights and size); a batch of faces is a loop of requests.

`auto` picks OpenVINO on CPU when it is installed, else torch. A missing extra falls back to torch with one log
line; it never fails a run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dlfp.layout import INFERENCE_BACKENDS

log = logging.getLogger(__name__)

BACKENDS = INFERENCE_BACKENDS
OPENVINO_EXTRA = "pip install 'dlfp[openvino]'"
CACHE_SUBDIR = "openvino"
MODEL_FILE = "model.xml"

Forward = Callable[[Tensor], Tensor]  # (B, 3, S, S) in [-1, 1] -> (B, 3, S, S)


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def resolve_backend(name: str, device: str) -> str:
    """The backend that will really run: `auto` is OpenVINO on CPU when installed; a missing extra is torch."""
    if name not in BACKENDS:
        raise ValueError(f"unknown inference backend {name!r}; choose from {', '.join(BACKENDS)}")
    if name == "torch" or device != "cpu":
        if name == "openvino":
            log.info("backend openvino runs on the CPU only; device %s uses torch", device)
        return "torch"
    if openvino_installed():
        return "openvino"
    if name == "openvino":
        log.warning("backend openvino requested but OpenVINO is not installed (%s): using torch", OPENVINO_EXTRA)
    return "torch"


def backend_record(chosen: str) -> dict[str, str]:
    """What a receipt or summary says about the backend that really ran: its name and its version."""
    if chosen == "openvino":
        import openvino

        return {"backend": chosen, "backend_version": f"openvino {openvino.__version__}"}
    return {"backend": chosen, "backend_version": f"torch {torch.__version__}"}


class ImageOnly(nn.Module):
    """The restorer's image output alone (no toRGB pyramid): the graph that is exported."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:  # (1, 3, S, S) -> (1, 3, S, S)
        image, _ = self.model(x, return_rgb=False)
        return image


def torch_forward(model: nn.Module) -> Forward:
    def run(x: Tensor) -> Tensor:
        with torch.inference_mode():
            image, _ = model(x, return_rgb=False)
        return image

    return run


def cache_key(weights_digest: str, size: int) -> str:
    import openvino

    text = f"{weights_digest}|1x3x{size}x{size}|openvino {openvino.__version__}|torch {torch.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def convert_to_openvino(model: nn.Module, size: int, folder: Path) -> Path:
    """Export (torch.export) and convert the model for a (1, 3, size, size) input into folder/model.xml.

    Written into a temporary sibling folder and renamed into place, so a killed conversion leaves no cache entry
    that looks finished.
    """
    import openvino

    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        example = torch.zeros(1, 3, size, size)
        with torch.no_grad():
            exported = torch.export.export(ImageOnly(model).eval(), (example,))
        converted = openvino.convert_model(exported, example_input=example)
        openvino.save_model(converted, str(work / MODEL_FILE), compress_to_fp16=False)
        try:
            work.rename(folder)
        except OSError:  # another process finished first: keep theirs
            if not (folder / MODEL_FILE).is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder / MODEL_FILE


def openvino_forward(model: nn.Module, weights_digest: str, size: int, threads: int, cache_root: Path) -> Forward:
    """A compiled OpenVINO model for (1, 3, size, size) inputs, converted once per key and cached."""
    import openvino

    folder = cache_root / CACHE_SUBDIR / cache_key(weights_digest, size)
    path = folder / MODEL_FILE
    if path.is_file():
        log.info("openvino: cached model %s", folder)
    else:
        log.info("openvino: converting the network for %d px inputs (once per weights and size) into %s", size, folder)
        path = convert_to_openvino(model, size, folder)
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = openvino.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()

    def run(x: Tensor) -> Tensor:
        outputs = [request.infer([row.unsqueeze(0).contiguous().numpy()])[0].copy() for row in x.float()]
        return torch.from_numpy(np.concatenate(outputs))

    return run
