"""The small JPEG strips of bias.html: the worst |dITA| faces per group (GT | LQ | restored) and example GTs
with their skin mask outlined, named by number (sample ids are metadata, never file names).

May import dlfp.io and dlfp.bias.faces.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from dlfp.bias.faces import FaceTone
from dlfp.io.atomic import write_bytes_atomic
from dlfp.io.images import encode_jpeg

THUMB_PX = 96
JPEG_QUALITY = 88
CONTOUR_COLOUR = (0, 255, 0)


def thumb(image: np.ndarray) -> np.ndarray:
    return cv2.resize(image, (THUMB_PX, THUMB_PX), interpolation=cv2.INTER_AREA)


def with_mask_outline(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The GT with the skin mask's outline, so a reader sees which skin the tone came from."""
    outlined = image.copy()
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(outlined, contours, -1, CONTOUR_COLOUR, 1)
    return outlined


@dataclass(order=True)
class WorstCase:
    score: float
    sample_id: str = field(compare=False)
    strip: np.ndarray = field(compare=False, repr=False)
    d_ita: float = field(compare=False)


def keep_worst(candidates: list[WorstCase], limit: int, sample_id: str, d_ita: float, gt: np.ndarray,
               lq: np.ndarray, restored: np.ndarray) -> None:
    """Keep the `limit` largest |dITA| faces in the min-heap `candidates` (the strip is drawn only if kept)."""
    score = abs(d_ita)
    if limit and math.isfinite(score) and (len(candidates) < limit or score > candidates[0].score):
        strip = np.concatenate([thumb(gt), thumb(lq), thumb(restored)], axis=1)
        item = WorstCase(score, sample_id, strip, d_ita)
        if len(candidates) < limit:
            heapq.heappush(candidates, item)
        else:
            heapq.heapreplace(candidates, item)


def save_images(staging: Path, worst: Mapping[tuple[str, str, str], list[WorstCase]],
                faces: Mapping[str, FaceTone], examples_source: Mapping[str, np.ndarray],
                group_info: Mapping[str, dict]) -> tuple[list[dict], list[dict]]:
    """JPEG strips named by number (ids are metadata, never file names); entries for bias.json."""
    worst_entries = []
    for number, ((preset, restorer, group), candidates) in enumerate(sorted(worst.items())):
        for rank, candidate in enumerate(sorted(candidates, reverse=True)):
            relative = f"worst/{number:04d}-{rank:02d}.jpg"
            write_bytes_atomic(staging / relative, encode_jpeg(candidate.strip, JPEG_QUALITY, encoder="opencv"))
            worst_entries.append({"preset": preset, "restorer": restorer, "group": group, "rank": rank,
                                  "id": candidate.sample_id, "d_ita": candidate.d_ita, "file": relative})
    example_entries = []
    order = {group: position for position, group in enumerate(group_info["skin_tone"])}
    for number, (sample_id, image) in enumerate(examples_source.items()):
        relative = f"examples/{number:04d}.jpg"
        write_bytes_atomic(staging / relative, encode_jpeg(image, JPEG_QUALITY, encoder="opencv"))
        face = faces[sample_id]
        example_entries.append({"id": sample_id, "band": face.band, "band_plain": face.band_plain,
                                "ita": face.measured.ita_deg if face.measured else None,
                                "correction_applied": face.measured.correction if face.measured else "",
                                "file": relative})
    example_entries.sort(key=lambda e: (order.get(e["band"], len(order)), e["id"]))
    return worst_entries, example_entries
