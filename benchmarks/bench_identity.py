"""Throughput of the dlib face-recognition ResNet port against dlib's own call, on the CPU.

Run: `python benchmarks/bench_identity.py [--threads 2]`. Writes benchmarks/results/identity.json and
identity.md (figures plus a machine description). Timings live here, never in tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dlfp.io.atomic import write_json_atomic, write_text_atomic
from dlfp.models import identity as idm
from dlfp.models.dlib_files import FACE_RECOGNITION_RESNET, dlib_model_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_description  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT.parent / "shared" / "faces" / "aligned_hq"
RESULTS = ROOT / "benchmarks" / "results"
BATCH = 32
MIN_SECONDS = 3.0  # keep timing each case until this much time has passed


def real_chips(count: int) -> np.ndarray:
    chips = []
    for path in sorted(FACES.glob("ffhq256_*.jpg")):
        faces = idm.dlib_face_chips(np.asarray(Image.open(path).convert("RGB")))
        chips += [chip for chip, _, _ in faces]
        if len(chips) >= count:
            break
    return np.stack(chips[:count])


def rate(step, items_per_call: int) -> dict:
    step()  # warm-up
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < MIN_SECONDS:
        step()
        calls += 1
    seconds = time.perf_counter() - start
    return {"faces_per_s": round(calls * items_per_call / seconds, 2),
            "ms_per_face": round(1000 * seconds / (calls * items_per_call), 3), "calls": calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import dlib

    chips = real_chips(BATCH)
    recognizer = dlib.face_recognition_model_v1(str(dlib_model_path(FACE_RECOGNITION_RESNET)))
    model = idm.load_dlib_resnet()
    tensor = model.normalize(torch.from_numpy(chips).permute(0, 3, 1, 2).float(), (0.0, 255.0))

    def port(batch: int):
        x = tensor[:batch].contiguous()

        def step():
            with torch.inference_mode():
                model(x)
        return step

    def port_with_grad(batch: int):
        x = tensor[:batch].clone().requires_grad_(True)

        def step():
            model(x).sum().backward()
        return step

    index = iter(range(10**9))

    def dlib_one():
        recognizer.compute_face_descriptor(chips[next(index) % len(chips)])

    results = {
        "dlib_one_by_one": rate(dlib_one, 1),
        "port_fp32_batch1": rate(port(1), 1),
        f"port_fp32_batch{BATCH}": rate(port(BATCH), BATCH),
        f"port_fp32_batch{BATCH}_forward_backward": rate(port_with_grad(BATCH), BATCH),
    }
    ours = idm.face_descriptor(chips)
    theirs = np.array([np.array(recognizer.compute_face_descriptor(c)) for c in chips])
    payload = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {**machine_description(), "torch_threads": args.threads, "dlib": dlib.__version__,
                    "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()]},
        "faces": len(chips),
        "agreement": {"max_abs_diff": float(np.abs(ours - theirs).max())},
        "results": results,
        "speedup_batch32_vs_dlib": round(results[f"port_fp32_batch{BATCH}"]["faces_per_s"]
                                         / results["dlib_one_by_one"]["faces_per_s"], 2),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / "identity.json", payload)
    lines = [
        "# Identity network throughput (dlib face ResNet port vs dlib)", "",
        f"{payload['date']}; {payload['machine']['cpu']}, {args.threads} threads; torch "
        f"{torch.__version__}, dlib {dlib.__version__}; {len(chips)} real 150x150 chips; load average "
        f"{payload['machine']['load_average_1_5_15']} (shared machine: compare ratios, not absolutes).", "",
        "| case | faces/s | ms/face |", "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {r['faces_per_s']} | {r['ms_per_face']} |" for name, r in results.items()]
    max_abs = payload["agreement"]["max_abs_diff"]
    lines += ["", f"Port vs dlib max abs difference on these chips: {max_abs:.2e}."]
    write_text_atomic(RESULTS / "identity.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
