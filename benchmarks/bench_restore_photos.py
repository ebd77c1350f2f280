"""End-to-end time of `dlfp restore INPUT... -o OUTDIR` per photo of ../shared/faces/wild, on the CPU.

Run: `python benchmarks/bench_restore_photos.py [--threads 2] [--models 128,512] [--upscale 1]
[--max-faces-512 N] [--backends torch,openvino] [--photos N]`. Writes benchmarks/results/restore_photos.json and
restore_photos.md. On a shared 2-core
machine a 512 px face takes 3.5 s (idle) to over 10 s (loaded), so the 512 px model is timed only on photos with
at most --max-faces-512 faces by default; the others are reported as "not computed" with that reason.

Per photo: seconds end to end (decode, detection, alignment, network, paste-back, writing), split into detection
/ alignment+warp (68 landmarks, similarity fit, crop) / network / paste-back (background resample, inverse warps,
feathered blend) / io, plus faces found and restored against dlib's own HOG detector count (an independent call
of dlib.get_frontal_face_detector on the image the command searches; photos reduced for detection are also
counted at full resolution).

No official weights exist on this machine: the models are randomly initialised GFPGANv1Clean networks saved with
save_official (the release 512 configuration, and the same configuration at out_size 128). The time of a
forward pass does not depend on the weights' values, so the timings hold for trained weights of the same shape.
Network time per photo is its share of the batches its faces were in (batch time / faces in the batch); a
photo's total is the sum of its parts (the wait while other photos fill a batch is not counted).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import dlib
import numpy as np
import torch

from dlfp.io.atomic import write_json_atomic, write_text_atomic
from dlfp.models.checkpoints import save_official
from dlfp.models.gfpgan import release_model
from dlfp.photos import detection, inputs, pipeline, summary

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_description  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WILD = ROOT.parent / "shared" / "faces" / "wild"
RESULTS = ROOT / "benchmarks" / "results"
SEED = 0
LIMITED_SIZE = 512
SPLIT = ("seconds_detect", "seconds_align", "seconds_network", "seconds_paste", "seconds_io")


def dlib_counts(path: Path, upscale: int) -> dict[str, int | None]:
    """dlib's HOG count on the image the command searches, and at full resolution when that was reduced."""
    photo = inputs.decode_photo(path, upscale=upscale, max_pixels=pipeline.DEFAULT_MAX_PIXELS)
    detector = dlib.get_frontal_face_detector()
    searched, factor = detection._scaled_for_detection(photo.rgb, detection.HOG_DETECT_MAX_SIDE)
    counts: dict[str, int | None] = {"dlib_count": len(detector(searched, detection.HOG_UPSAMPLE)),
                                     "dlib_count_full_resolution": None, "detect_scale": round(factor, 4)}
    if factor != 1.0:
        counts["dlib_count_full_resolution"] = len(detector(np.ascontiguousarray(photo.rgb), detection.HOG_UPSAMPLE))
    return counts


def time_model(out_size: int, inputs: list[Path], work: Path, upscale: int, batch_size: int,
               backend: str = "torch") -> dict:
    """One `dlfp restore` run; with OpenVINO the wall time includes the one conversion (empty $DLFP_CACHE)."""
    torch.manual_seed(SEED)
    weights = work / f"random_release_{out_size}.pth"
    if not weights.is_file():
        save_official(release_model(out_size=out_size), weights)
    os.environ["DLFP_CACHE"] = str(work / "cache")
    started = time.perf_counter()
    run_summary = pipeline.run_photos(inputs, work / f"out_{out_size}_{backend}", weights=weights,
                                      upscale=upscale, batch_size=batch_size, device="cpu",
                                      force=True, backend=backend)  # force: every face, too large or not
    wall = time.perf_counter() - started
    return {"out_size": out_size, "backend": run_summary["run"]["backend"], "backend_version":
            run_summary["run"]["backend_version"], "wall_seconds": round(wall, 2), "run": run_summary["run"],
            "load_average": [round(value, 2) for value in os.getloadavg()],
            "photos": {Path(row["input"]).name: {key: row[key] for key in (*summary.SUMMARY_COLUMNS, "notes")}
                       for row in run_summary["photos"]}}


def seconds_per_face(model: dict) -> float:
    """End to end: the sum of the photos' own times over the faces restored."""
    return sum(row["seconds"] for row in model["photos"].values()) / max(model["run"]["faces_restored"], 1)


def backend_ratios(models: list[dict]) -> list[dict]:
    """torch's end-to-end seconds per face over each other backend's, per model size (x > 1: the other is faster)."""
    by_size = {model["out_size"]: model for model in models if model["backend"] == "torch"}
    return [{"out_size": model["out_size"], "backend": model["backend"],
             "torch_s_per_face": round(seconds_per_face(by_size[model["out_size"]]), 3),
             "other_s_per_face": round(seconds_per_face(model), 3),
             "ratio": round(seconds_per_face(by_size[model["out_size"]]) / seconds_per_face(model), 3)}
            for model in models if model["backend"] != "torch" and model["out_size"] in by_size]


def markdown(result: dict) -> str:
    sizes = [model["out_size"] for model in result["models"]]
    labels = [f"{model['out_size']} px {model.get('backend', 'torch')}" for model in result["models"]]
    lines = [
        "# `dlfp restore` on own photos: end-to-end time per photo", "",
        f"{result['date']}, {result['machine']['cpu']}, torch threads {result['threads']}, upscale "
        f"x{result['upscale']}, batch {result['batch_size']} faces (across photos), HOG detector (upsample "
        f"{detection.HOG_UPSAMPLE}; photos over {detection.HOG_DETECT_MAX_SIDE} px searched at that side).", "",
        *([result["note"], ""] if result.get("note") else []),
        "Weights: randomly initialised GFPGANv1Clean (release configuration; the 128 px model is the same "
        "configuration at out_size 128), saved in the official format. A forward pass costs the same whatever the "
        "weights' values, so these times hold for trained weights of the same shape.", "",
        "Seconds per photo: total = detection + alignment/warp + network + paste-back + io (decode and PNG "
        "writes). Network time is the photo's share of its batches (the wait for a batch to fill is not counted). "
        "dlib = dlib.get_frontal_face_detector on the "
        "image the command searched (in brackets: at full resolution, where the photo was reduced for detection).",
        "",
    ]
    header = "| photo | size | faces found / restored / dlib | " + " | ".join(
        f"{label} total (det / align / net / paste / io)" for label in labels) + " |"
    lines += [header, "| --- | --- | --- | " + " | ".join("---" for _ in sizes) + " |"]
    first = result["models"][0]["photos"]
    for name, row in first.items():
        count = result["dlib"][name]
        dlib_text = str(count["dlib_count"]) + (f" ({count['dlib_count_full_resolution']})"
                                                if count["dlib_count_full_resolution"] is not None else "")
        cells = []
        for model in result["models"]:
            other = model["photos"].get(name)
            if other is None:
                cells.append(f"not computed: {model['skipped_reason']}")
                continue
            split = " / ".join(f"{other[key]:.2f}" for key in SPLIT)
            cells.append(f"{other['seconds']:.2f} ({split})" if other["status"] != summary.STATUS_FAILED
                         else f"failed: {other['reason']}")
        lines.append(f"| {name} | {row['width']}x{row['height']} | {row['faces_found']} / {row['faces_restored']} / "
                     f"{dlib_text} | " + " | ".join(cells) + " |")
    lines.append("")
    for model in result["models"]:
        run = model["run"]
        rows = model["photos"].values()
        total = sum(row["seconds"] for row in rows)
        network = sum(row["seconds_network"] for row in rows)
        faces = max(run["faces_restored"], 1)
        lines.append(f"- {model['out_size']} px, backend {model.get('backend', 'torch')} "
                     f"({model.get('backend_version', '')}): {run['photos']} photos, {run['failed']} failed, "
                     f"{run['faces_restored']} of {run['faces_found']} faces restored; sum of per-photo times "
                     f"{total:.1f} s ({total / faces:.2f} s per face end to end), of which network {network:.1f} s "
                     f"({network / faces:.2f} s per face); wall {model['wall_seconds']:.1f} s (with OpenVINO: "
                     f"including its one conversion); load average after the run "
                     f"{model['load_average']} on {result['machine']['affinity']} cores."
                     + (f" Not timed: {model['skipped_reason']}." if model["skipped"] else ""))
    lines += [f"- End to end per face, {pair['out_size']} px: torch / {pair['backend']} = {pair['ratio']:.2f} "
              f"({pair['torch_s_per_face']:.2f} s / {pair['other_s_per_face']:.2f} s, measured one after the other "
              "on a shared machine: only the ratio counts)" for pair in result.get("ratios", [])]
    agree = result["agreement"]
    lines += ["", f"- Faces restored = dlib's count on {agree['restored_equals_dlib']} of {agree['photos']} photos; "
                  f"faces found = dlib's count on {agree['found_equals_dlib']} of {agree['photos']}. "
                  f"Differences: {agree['differences'] or 'none'}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="512,128", help="out_size of each timed model, comma-separated")
    parser.add_argument("--upscale", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--backends", default="torch", help="inference backends, comma-separated (torch,openvino)")
    parser.add_argument("--photos", type=int, default=0, help="time only the first N photos (sorted); 0: all")
    parser.add_argument("--note", default="", help="what the reader must know about this run (e.g. the load)")
    parser.add_argument("--max-faces-512", type=int, default=2,
                        help="time 512 px models only on photos with at most this many faces (-1: all photos)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = sorted(path.name for path in WILD.iterdir() if path.suffix.lower() in inputs.IMAGE_SUFFIXES)
    names = names[:args.photos] if args.photos > 0 else names
    counts = {name: dlib_counts(WILD / name, args.upscale) for name in names}
    models = []
    with tempfile.TemporaryDirectory(prefix="bench_restore_photos.") as tmp:
        runs = [(int(size), backend) for size in args.models.split(",") for backend in args.backends.split(",")]
        for out_size, backend in runs:
            limited = out_size >= LIMITED_SIZE and args.max_faces_512 >= 0
            chosen = [name for name in names if not limited or counts[name]["dlib_count"] <= args.max_faces_512]
            model = time_model(out_size, [WILD / name for name in chosen], Path(tmp), args.upscale, args.batch_size,
                               backend)
            model["skipped"] = sorted(set(names) - set(chosen))
            model["skipped_reason"] = (f"photos with more than {args.max_faces_512} faces are left out at "
                                       f"{out_size} px to bound the run on a shared 2-core CPU (--max-faces-512)")
            models.append(model)
    first = models[0]["photos"]
    differences = {name: {"found": row["faces_found"], "restored": row["faces_restored"],
                          "dlib": counts[name]["dlib_count"], "status": row["status"], "reason": row["reason"]}
                   for name, row in first.items() if row["faces_restored"] != counts[name]["dlib_count"]}
    def agreeing(column: str) -> int:
        return sum(row[column] == counts[name]["dlib_count"] for name, row in first.items())

    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine_description(),
        "ratios": backend_ratios(models), "note": args.note,
        "threads": args.threads, "upscale": args.upscale, "batch_size": args.batch_size,
        "weights": "random init (torch.manual_seed(0)), release GFPGANv1Clean configuration, save_official",
        "dlib": counts, "models": models,
        "agreement": {"photos": len(first),
                      "restored_equals_dlib": agreeing("faces_restored"), "found_equals_dlib": agreeing("faces_found"),
                      "differences": differences},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / "restore_photos.json", result)
    write_text_atomic(RESULTS / "restore_photos.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
