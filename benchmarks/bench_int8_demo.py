"""INT8 (NNCF post-training quantisation) vs fp32 OpenVINO on the trained demo model: quality, not speed.

Run: `python benchmarks/bench_int8_demo.py [--weights models/gfpgan/gfpgan.pth]`; writes
benchmarks/results/int8_demo.json. Calibration: 16 FFHQ faces of ../shared/faces/aligned_hq, evaluation: the next
32, each degraded simply (area down 4x, bicubic back up) and restored by the fp32 and the INT8 model. Reports the
PSNR of INT8 against fp32 (8-bit outputs) and dlib's 128-D descriptor distance INT8 vs fp32 and each vs the
ground truth, with 95 % normal intervals over the faces. Why: an opt-in INT8 backend is only worth offering when
a user can judge what it costs; INT8 is not shipped (README, models.md "Also tried").
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from dlfp import inference
from dlfp.io.images import load_rgb
from dlfp.metrics.identity import IdentityScorer, identity_distance
from dlfp.models.checkpoints import read_state_dict
from dlfp.models.gfpgan import GFPGANv1Clean
from dlfp.restorers import infer_gfpgan_config, sidecar_config

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT.parent / "shared" / "faces" / "aligned_hq"
CALIBRATION, EVALUATION = 16, 32
DOWN = 4


def _interval(values: object) -> list[float]:
    v = np.asarray(values, float)
    half = 1.96 * v.std(ddof=1) / np.sqrt(len(v))
    return [round(float(v.mean()), 4), round(float(v.mean() - half), 4), round(float(v.mean() + half), 4)]


def main() -> None:
    import nncf
    import openvino as ov

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=ROOT / "models" / "gfpgan" / "gfpgan.pth")
    args = parser.parse_args()
    torch.set_num_threads(2)
    state = read_state_dict(args.weights)
    config = {**infer_gfpgan_config(state), "input_is_latent": True, **sidecar_config(args.weights)}
    model = GFPGANv1Clean(**config)
    model.load_state_dict(state)
    model.eval().fixed_noise = True
    size = int(config["out_size"])

    def degraded(path: Path) -> tuple[np.ndarray, np.ndarray]:
        gt = cv2.resize(load_rgb(path), (size, size), interpolation=cv2.INTER_AREA)
        small = cv2.resize(gt, (size // DOWN, size // DOWN), interpolation=cv2.INTER_AREA)
        return gt, cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)

    def tensor(image: np.ndarray) -> np.ndarray:
        return (torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1).unsqueeze(0).numpy()

    def pixels(output: np.ndarray) -> np.ndarray:
        return ((np.clip(output[0].transpose(1, 2, 0), -1, 1) + 1) * 127.5).round().astype(np.uint8)

    faces = sorted(FACES.glob("ffhq*.jpg"))
    core = ov.Core()
    fp32 = core.read_model(str(inference.convert_to_openvino(model, size, Path(tempfile.mkdtemp()) / "fp32")))
    started = time.perf_counter()
    int8 = nncf.quantize(fp32, nncf.Dataset([tensor(degraded(p)[1]) for p in faces[:CALIBRATION]]),
                         subset_size=CALIBRATION, fast_bias_correction=True)
    quantise_s = time.perf_counter() - started
    config_ov = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "f32"}
    run32, run8 = core.compile_model(fp32, "CPU", config_ov), core.compile_model(int8, "CPU", config_ov)
    out32, out8, gts = [], [], []
    for path in faces[CALIBRATION:CALIBRATION + EVALUATION]:
        gt, lq = degraded(path)
        out32.append(pixels(run32([tensor(lq)])[0]))
        out8.append(pixels(run8([tensor(lq)])[0]))
        gts.append(gt)
    psnr = [10 * np.log10(255 ** 2 / max(np.mean((a.astype(float) - b.astype(float)) ** 2), 1e-12))
            for a, b in zip(out32, out8, strict=True)]
    scorer = IdentityScorer()
    e32, e8, egt = scorer.embed(out32), scorer.embed(out8), scorer.embed(gts)
    d32, d8 = identity_distance(e32, egt), identity_distance(e8, egt)
    result = {"weights": str(args.weights), "out_size": size, "calibration_faces": CALIBRATION,
              "evaluation_faces": len(gts), "degradation": f"area down {DOWN}x, bicubic up",
              "quantise_s": round(quantise_s, 1), "openvino": ov.__version__, "nncf": nncf.__version__,
              "psnr_int8_vs_fp32_db_mean_ci95": _interval(psnr), "psnr_int8_vs_fp32_db_min": round(min(psnr), 2),
              "identity_distance_int8_vs_fp32_mean_ci95": _interval(identity_distance(e8, e32)),
              "identity_distance_to_gt_fp32_mean_ci95": _interval(d32),
              "identity_distance_to_gt_int8_mean_ci95": _interval(d8),
              "identity_distance_to_gt_int8_minus_fp32_mean_ci95": _interval(np.asarray(d8) - np.asarray(d32))}
    out = ROOT / "benchmarks" / "results" / "int8_demo.json"
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
