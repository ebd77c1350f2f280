"""What the evaluation page shows beyond the figures, written by the evaluate stage so the page only reads it.

- gallery.json + images/gallery-*.jpg: the first `report.pairs_per_preset` test pairs of each preset as LQ, every
  restorer that ran (but the LQ copy) and GT, each with its PSNR and identity distance as caption;
- worst_cases.json + images/worst-*.jpg: per restorer, the WORST_PER_RESTORER faces with the largest identity
  distance over every preset, with LQ / result / GT thumbnails;
- timing.json: each restorer's mean seconds per image, from the restore stage's timings.csv.

Images are shrunk to GALLERY_PX / WORST_PX and stored as JPEG under names made of positions only (never of sample
ids); the metrics are computed on the original PNGs, not on these. Imports the shards reader and dlfp.io only.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dlfp.io.atomic import write_bytes_atomic, write_json_atomic
from dlfp.io.images import decode_png_bytes, encode_jpeg
from dlfp.layout import TIMINGS_NAME
from dlfp.shards.local import iter_samples

GALLERY_NAME = "gallery.json"
WORST_CASES_NAME = "worst_cases.json"
TIMING_NAME = "timing.json"
IMAGES_DIR = "images"
GALLERY_PX = 256
WORST_PX = 128
JPEG_QUALITY = 90
WORST_PER_RESTORER = 5
CAPTION_KEYS = ("psnr", "identity_distance", "identity_match")  # per-image values the captions show


def restorer_order(names: Iterable[str], order: Sequence[str]) -> list[str]:
    """`names` in `order` first (unknown ones after, by name)."""
    rank: dict[str, int] = {}
    for name in order:
        rank.setdefault(name, len(rank))
    return sorted(names, key=lambda name: (rank.get(name, len(rank)), name))


def thumbnail_jpeg(png: bytes, side: int, source: str) -> bytes:
    """Shrink to at most `side` px (Lanczos) and encode as JPEG."""
    image = Image.fromarray(decode_png_bytes(png, source=source))
    scale = min(1.0, side / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
    return encode_jpeg(np.asarray(image), JPEG_QUALITY)


def read_members(folder: Path, records: list[dict], member: str, wanted: set[str] | None = None,
                 limit: int = 0) -> dict[str, bytes]:
    """{key: bytes of `member`} of the wanted keys, or of the first `limit` keys; stops reading once complete."""
    found: dict[str, bytes] = {}
    goal = len(wanted) if wanted is not None else limit
    if goal == 0:
        return found
    for sample in iter_samples(folder, records, verify=False):  # verified while the stage scored them
        if wanted is None or sample["__key__"] in wanted:
            found[sample["__key__"]] = sample[member]
        if len(found) >= goal:
            break
    return found


def caption(row: Mapping | None) -> list[str]:
    """This face's PSNR and identity distance, as the gallery shows them."""
    if row is None:
        return []
    lines = []
    if row.get("psnr") is not None:
        lines.append(f"PSNR (RGB) {float(row['psnr']):.2f} dB")
    if row.get("identity_distance") is not None:
        match = "match" if row.get("identity_match") else "no match"
        lines.append(f"id distance {float(row['identity_distance']):.3f} ({match})")
    return lines


def _write_view(images: Path, label: str, png: bytes | None, side: int, name: str, source: str) -> dict:
    if png is None:
        return {"label": label, "file": None}
    write_bytes_atomic(images / name, thumbnail_jpeg(png, side, source))
    return {"label": label, "file": name}


def write_gallery(out: Path, per_preset: int, presets: Mapping[str, list[dict]], restored_dir: Path,
                  restored: Mapping[str, Mapping[str, list[dict]]], pairs_dir: Path, lq_restorer: str,
                  rows: Mapping[tuple[str, str, str], Mapping]) -> dict:
    """The first `per_preset` pairs of each preset: LQ, every restorer in `restored` (but the LQ copy), GT.

    presets: {preset: pair shard records}; restored: {restorer: {preset: shard records}}, in display order."""
    shown = [name for name in restored if name != lq_restorer]
    document: dict = {"per_preset": per_preset, "image_px": GALLERY_PX, "jpeg_quality": JPEG_QUALITY, "presets": []}
    for p_index, (preset, records) in enumerate(presets.items()):
        lq = read_members(pairs_dir, records, "lq.png", limit=per_preset)
        gt = read_members(pairs_dir, records, "gt.png", wanted=set(lq))
        outputs = {name: read_members(restored_dir, restored[name][preset], "restored.png", wanted=set(lq))
                   for name in shown} if lq else {}
        faces = []
        for f_index, key in enumerate(lq):
            candidates = [("LQ input", lq[key], lq_restorer), *((name, outputs[name].get(key), name) for name in shown),
                          ("GT", gt.get(key), None)]
            views = []
            for v_index, (label, png, restorer) in enumerate(candidates):
                name = f"gallery-p{p_index}-f{f_index}-v{v_index}.jpg"
                view = _write_view(out / IMAGES_DIR, label, png, GALLERY_PX, name, f"{preset}/{key}")
                view["caption"] = caption(rows.get((preset, restorer, key))) if restorer else []
                views.append(view)
            faces.append({"id": key, "views": views})
        document["presets"].append({"preset": preset, "faces": faces})
    write_json_atomic(out / GALLERY_NAME, document)
    return document


def worst_rows(rows: Iterable[Mapping], order: Sequence[str]) -> dict[str, list[Mapping]]:
    """Per restorer (in `order`), the WORST_PER_RESTORER rows with the largest identity distance over every preset."""
    by_restorer: dict[str, list[Mapping]] = {}
    for row in rows:
        distance = row.get("identity_distance")
        if distance is not None and math.isfinite(distance):
            by_restorer.setdefault(str(row["restorer"]), []).append(row)
    return {name: sorted(by_restorer[name], key=lambda row: (-row["identity_distance"], str(row["preset"]),
                                                             str(row["id"])))[:WORST_PER_RESTORER]
            for name in restorer_order(by_restorer, order)}


def write_worst_cases(out: Path, rows: Iterable[Mapping], order: Sequence[str], presets: Mapping[str, list[dict]],
                      restored_dir: Path, restored: Mapping[str, Mapping[str, list[dict]]], pairs_dir: Path,
                      lq_restorer: str) -> dict:
    """The worst faces by identity distance with LQ / restored / GT thumbnails; each tar set is read once."""
    worst = worst_rows(rows, order)
    wanted_pairs: dict[str, set[str]] = {}
    wanted_restored: dict[tuple[str, str], set[str]] = {}
    for restorer, chosen in worst.items():
        for row in chosen:
            wanted_pairs.setdefault(row["preset"], set()).add(row["id"])
            if restorer != lq_restorer:
                wanted_restored.setdefault((restorer, row["preset"]), set()).add(row["id"])
    lq = {preset: read_members(pairs_dir, presets[preset], "lq.png", keys) for preset, keys in wanted_pairs.items()}
    gt = {preset: read_members(pairs_dir, presets[preset], "gt.png", keys) for preset, keys in wanted_pairs.items()}
    outputs = {(restorer, preset): read_members(restored_dir, restored[restorer][preset], "restored.png", keys)
               for (restorer, preset), keys in wanted_restored.items()}
    document: dict = {"per_restorer": WORST_PER_RESTORER, "image_px": WORST_PX, "jpeg_quality": JPEG_QUALITY,
                      "ranked_by": "identity distance (dlib descriptors), largest first, over every preset",
                      "restorers": []}
    for r_index, (restorer, chosen) in enumerate(worst.items()):
        cases = []
        for c_index, row in enumerate(chosen):
            preset, key = row["preset"], row["id"]
            images = [("LQ input", lq[preset].get(key))]
            if restorer != lq_restorer:
                images.append((restorer, outputs[(restorer, preset)].get(key)))
            images.append(("GT", gt[preset].get(key)))
            views = [_write_view(out / IMAGES_DIR, label, png, WORST_PX, f"worst-r{r_index}-c{c_index}-v{v}.jpg",
                                 f"{preset}/{key}") for v, (label, png) in enumerate(images)]
            cases.append({"preset": preset, "id": key, "identity_distance": row["identity_distance"],
                          "identity_match": row.get("identity_match"), "psnr": row.get("psnr"), "views": views})
        document["restorers"].append({"restorer": restorer, "cases": cases})
    write_json_atomic(out / WORST_CASES_NAME, document)
    return document


def write_timing(out: Path, restored_dir: Path) -> dict:
    """Each restorer's mean seconds per image over every preset (the restore stage's timings.csv)."""
    path = restored_dir / TIMINGS_NAME
    document: dict = {"source": TIMINGS_NAME, "seconds_per_image": {}}
    if not path.is_file():
        document["note"] = f"no {TIMINGS_NAME} in the restore stage's output"
    else:
        totals: dict[str, list[float]] = {}
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                try:
                    totals.setdefault(str(row.get("restorer")), []).append(float(row.get("seconds") or "nan"))
                except ValueError:
                    continue
        document["seconds_per_image"] = {name: sum(values) / len(values) for name, values in totals.items()
                                         if values and all(math.isfinite(v) for v in values)}
    write_json_atomic(out / TIMING_NAME, document)
    return document


def write_page_assets(out: Path, *, pairs_dir: Path, split_presets: Mapping[str, Mapping], restored_dir: Path,
                      restored_index: Mapping, rows: list[Mapping], order: Sequence[str], per_preset: int,
                      lq_restorer: str, status_ok: str) -> None:
    """Gallery, worst cases and timing of one evaluation, into `out` (the stage's staging folder)."""
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    presets = {preset: list(entry["shards"]) for preset, entry in split_presets.items()}
    entries = {str(name): entry for name, entry in restored_index.get("restorers", {}).items()
               if entry.get("status") == status_ok}
    restored = {name: {preset: list(entries[name]["presets"][preset]["shards"]) for preset in presets}
                for name in restorer_order(entries, order)}
    captions = {(row["preset"], row["restorer"], row["id"]): row for row in rows}
    write_gallery(out, per_preset, presets, restored_dir, restored, pairs_dir, lq_restorer, captions)
    write_worst_cases(out, rows, order, presets, restored_dir, restored, pairs_dir, lq_restorer)
    write_timing(out, restored_dir)
