"""The align stage: one FFHQ-aligned face per input image, with its 68 landmarks and component boxes.

Input (the acquire stage's folder): images/<id>.png, manifest.csv (id, source, licence, ffhq_id, ...),
rejects.csv, receipt.json. Output: images/<id>.png at data.size, meta.jsonl (one JSON object per kept image,
sorted by id), rejects.csv (cumulative: acquire's rejects carried over with stage "acquire", then this
stage's), receipt.json.

Decisions: how a face is found, judged already aligned, and cropped is dlfp.faces.alignment's (its docstring;
align.min_face_size and align.aligned_tolerance are its thresholds). This stage's own:
- Output bytes do not depend on the number of workers: each image is processed independently and every
  file is written in sorted id order.

Imports dlfp.faces, dlfp.io and dlfp.params.
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
from tqdm import tqdm

from dlfp.faces.alignment import (
    ALIGNMENT_FFHQ,
    ALIGNMENT_PASSTHROUGH,
    REJECT_UNREADABLE,
    AlignedFace,
    FaceRejected,
    align_image,
)
from dlfp.faces.landmarks import Detector, FaceLandmarker
from dlfp.io.atomic import staged_output, write_bytes_atomic, write_csv_atomic, write_text_atomic
from dlfp.io.hashing import file_digest
from dlfp.io.images import ImageRejected, decode_image, encode_png
from dlfp.io.receipt import write_receipt
from dlfp.layout import MANIFEST_NAME, META_NAME, REJECTS_NAME
from dlfp.params import Params

STAGE = "align"
LANDMARK_DECIMALS = 2
REJECTS_HEADER = ("id", "source", "stage", "reason", "detail")
IMAGES_DIR = "images"
CHUNKSIZE = 4


# ------------------------------------------------------------------------------------- meta records
def face_record(face: AlignedFace) -> dict:
    """The geometry part of a meta.jsonl line, rounded so the text is stable."""
    return {
        "alignment": face.alignment,
        "landmarks": [[round(float(x), LANDMARK_DECIMALS), round(float(y), LANDMARK_DECIMALS)]
                      for x, y in face.landmarks],
        "boxes": {name: [round(v, LANDMARK_DECIMALS) for v in box] for name, box in face.boxes.items()},
        "face_box": face.face_box.as_list(),
        "detector": face.face_box.detector,
    }


# -------------------------------------------------------------------------------- worker processes
@dataclass(frozen=True)
class AlignConfig:
    """Plain values a worker needs (picklable; no params object crosses the process boundary)."""

    in_images: str
    out_images: str
    size: int
    detector: Detector
    upsample: int
    cnn_fallback: bool
    min_face_size: int
    tolerance: float


_WORKER: dict[str, object] = {}


def _init_worker(config: AlignConfig, single_thread: bool) -> None:
    """Load dlib's models once per worker process.

    A failure is kept and raised by the first task instead: an initializer that raises makes
    multiprocessing.Pool respawn workers forever.
    """
    if single_thread:
        cv2.setNumThreads(1)   # two workers on two cores: no oversubscription
    _WORKER["config"] = config
    try:
        _WORKER["landmarker"] = FaceLandmarker(config.detector, config.upsample, config.cnn_fallback)
    except Exception as error:  # noqa: BLE001 - re-raised in _process with its message
        _WORKER["error"] = error


def _process(image_id: str) -> dict:
    """Align one image: write its PNG, return its record or its rejection (never raises for bad inputs)."""
    if "error" in _WORKER:
        raise RuntimeError(f"align worker could not load the dlib models: {_WORKER['error']}")
    config: AlignConfig = _WORKER["config"]  # type: ignore[assignment]
    landmarker: FaceLandmarker = _WORKER["landmarker"]  # type: ignore[assignment]
    path = Path(config.in_images) / f"{image_id}.png"
    result: dict = {"id": image_id, "input_sha256": file_digest(path) if path.is_file() else None}
    try:
        rgb = decode_image(path).rgb
        face = align_image(rgb, landmarker, size=config.size, min_face_size=config.min_face_size,
                           tolerance=config.tolerance)
    except ImageRejected as error:
        return {**result, "reason": REJECT_UNREADABLE, "detail": error.reason}
    except FaceRejected as error:
        return {**result, "reason": error.reason, "detail": error.detail}
    write_bytes_atomic(Path(config.out_images) / f"{image_id}.png", encode_png(face.image))
    return {**result, "record": face_record(face)}


def _process_all(ids: list[str], config: AlignConfig, workers: int) -> Iterator[dict]:
    """Results in completion order (the caller sorts); one process per worker, models loaded once each."""
    if workers <= 1 or len(ids) <= 1:
        _init_worker(config, single_thread=False)
        try:
            yield from map(_process, ids)
        finally:
            _WORKER.clear()
        return
    context = multiprocessing.get_context("spawn")   # no fork of a threaded parent
    with context.Pool(workers, initializer=_init_worker, initargs=(config, True)) as pool:
        yield from pool.imap_unordered(_process, ids, chunksize=CHUNKSIZE)


# ----------------------------------------------------------------------------------- stage files
def read_manifest(in_dir: Path) -> list[dict[str, str]]:
    """The acquire manifest's rows, sorted by id."""
    path = in_dir / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; run `dlfp acquire` first (or pass --in)")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if rows and "id" not in rows[0]:
        raise ValueError(f"{path}: manifest has no 'id' column")
    ids = [row["id"] for row in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate ids in the manifest")
    return sorted(rows, key=lambda row: row["id"])


def read_previous_rejects(in_dir: Path) -> list[list[str]]:
    """Earlier stages' rejects (acquire's), in REJECTS_HEADER order, so rejects.csv stays cumulative."""
    path = in_dir / REJECTS_NAME
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [[row.get("id") or "", row.get("source") or "", row.get("stage") or "acquire",
                 row.get("reason") or "", row.get("detail") or ""] for row in csv.DictReader(handle)]


def _ffhq_id(value: str | None) -> int | str | None:
    if value is None or value.strip() == "":
        return None
    return int(value) if value.strip().isdigit() else value.strip()


def _meta_line(row: dict[str, str], record: dict) -> str:
    meta = {"id": row["id"], "source": row.get("source") or None, "licence": row.get("licence") or None,
            "ffhq_id": _ffhq_id(row.get("ffhq_id")), **record}
    return json.dumps(meta, ensure_ascii=False, separators=(",", ":"))


def _images_digest(results: Iterable[dict]) -> str:
    digest = hashlib.sha256()
    for result in results:
        digest.update(f"{result['id']}\t{result['input_sha256']}\n".encode())
    return digest.hexdigest()


def _write_outputs(out: Path, rows: list[dict[str, str]], results: dict[str, dict],
                   previous_rejects: list[list[str]]) -> dict:
    """meta.jsonl and rejects.csv in sorted id order; returns the counts for the receipt."""
    meta_lines, rejects, alignments, reasons = [], [], Counter(), Counter()
    for row in rows:
        result = results[row["id"]]
        if "record" in result:
            meta_lines.append(_meta_line(row, result["record"]))
            alignments[result["record"]["alignment"]] += 1
        else:
            rejects.append([row["id"], row.get("source") or "", STAGE, result["reason"], result["detail"]])
            reasons[result["reason"]] += 1
    write_text_atomic(out / META_NAME, "".join(line + "\n" for line in meta_lines))
    write_csv_atomic(out / REJECTS_NAME, REJECTS_HEADER, previous_rejects + rejects)
    return {
        "input": len(rows),
        "kept": len(meta_lines),
        "passthrough": alignments[ALIGNMENT_PASSTHROUGH],
        "aligned": alignments[ALIGNMENT_FFHQ],
        "rejected": sum(reasons.values()),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "rejected_earlier": len(previous_rejects),
    }


def align_params_hash(params: Params) -> str:
    """Hash of what changes this stage's output: data.size and align.* except the worker count."""
    payload = {"size": params.data.size, "align": params.align.model_dump(mode="json", exclude={"workers"})}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def run(params: Params, in_dir: Path | str, out_dir: Path | str, workers: int | None = None) -> dict:
    """Stage entry: align every manifest image of `in_dir` into `out_dir`; returns the counts."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    workers = params.align.workers if workers is None else workers
    started = time.monotonic()
    rows = read_manifest(in_dir)
    previous_rejects = read_previous_rejects(in_dir)
    with staged_output(out_dir) as out:
        (out / IMAGES_DIR).mkdir()
        config = AlignConfig(in_images=str(in_dir / IMAGES_DIR), out_images=str(out / IMAGES_DIR),
                             size=params.data.size, detector=params.align.detector,
                             upsample=params.align.upsample, cnn_fallback=params.align.cnn_fallback,
                             min_face_size=params.align.min_face_size,
                             tolerance=params.align.aligned_tolerance)
        ids = [row["id"] for row in rows]
        results: dict[str, dict] = {}
        for result in tqdm(_process_all(ids, config, workers), total=len(ids), desc=STAGE, unit="img",
                           file=sys.stderr):
            results[result["id"]] = result
        counts = _write_outputs(out, rows, results, previous_rejects)
        inputs = {"manifest_sha256": file_digest(in_dir / MANIFEST_NAME),
                  "images_sha256": _images_digest(results[i] for i in ids)}
        write_receipt(out, stage=STAGE, params_hash=align_params_hash(params), seed=None,
                      counts=counts, inputs=inputs, packages=("dlib-bin", "opencv-python-headless", "pillow",
                                                              "numpy"),
                      extra={"size": params.data.size, "landmarks": "input landmarks mapped through the "
                             "alignment transform; pixel-centre coordinates of the output"})
    seconds = time.monotonic() - started
    print(f"align: {counts['kept']}/{counts['input']} kept ({counts['passthrough']} passthrough, "
          f"{counts['aligned']} aligned), {counts['rejected']} rejected {counts['rejected_by_reason']} "
          f"in {seconds:.1f} s -> {out_dir}", file=sys.stderr)
    return {**counts, "seconds": round(seconds, 2), "out_dir": str(out_dir)}
