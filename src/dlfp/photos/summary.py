"""Own photos: the summary of a run. One row per photo (PhotoResult), the status words and reason texts, and
summary.json / summary.csv.

A library: imports dlfp.io only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dlfp.io.atomic import write_csv_atomic, write_json_atomic
from dlfp.layout import STATUS_OK

STATUS_NO_FACE = "no face"
STATUS_TOO_SMALL = "face too small"
STATUS_NO_USABLE_FACE = "no usable face"
STATUS_RESOLUTION_TOO_LOW = "model resolution too low"
STATUS_FAILED = "failed"

SUMMARY_JSON, SUMMARY_CSV = "summary.json", "summary.csv"
SUMMARY_COLUMNS = ("input", "output", "faces_found", "faces_restored", "faces_skipped_small",
                   "faces_skipped_landmarks", "faces_skipped_off_centre", "faces_skipped_too_large", "width", "height",
                   "out_width", "out_height", "seconds", "seconds_detect", "seconds_align", "seconds_network",
                   "seconds_paste", "seconds_io", "status", "reason")
SECONDS_DECIMALS = 4


@dataclass
class PhotoResult:
    """One summary row (plus the crops for the HTML page)."""

    input: str
    output: str = ""
    faces_found: int = 0
    faces_restored: int = 0
    faces_skipped_small: int = 0
    faces_skipped_landmarks: int = 0
    faces_skipped_off_centre: int = 0
    faces_skipped_too_large: int = 0
    width: int = 0
    height: int = 0
    out_width: int = 0
    out_height: int = 0
    seconds: float = 0.0
    seconds_detect: float = 0.0
    seconds_align: float = 0.0
    seconds_network: float = 0.0
    seconds_paste: float = 0.0
    seconds_io: float = 0.0
    status: str = STATUS_FAILED
    reason: str = ""
    notes: str = ""
    crops: list[dict[str, str]] = field(default_factory=list)
    too_large_sizes: list[int] = field(default_factory=list)  # output px of each face left as it was

    def own_seconds(self) -> float:
        """This photo's own time: its parts, not the wait while other photos filled its network batches."""
        return (self.seconds_io + self.seconds_detect + self.seconds_align + self.seconds_network
                + self.seconds_paste)

    def row(self) -> list[object]:
        values = asdict(self)
        return [round(values[c], SECONDS_DECIMALS) if c.startswith("seconds") else values[c]
                for c in SUMMARY_COLUMNS]


def resolution_too_low(out_size: int, sizes: Sequence[int]) -> str:
    """The reason text for faces left as they were, e.g. 'model resolution too low (64 px model, 250 px face)'."""
    faces = ", ".join(f"{size} px" for size in sizes)
    return f"{STATUS_RESOLUTION_TOO_LOW} ({out_size} px model, {faces} face{'s' if len(sizes) > 1 else ''})"


def photo_status(result: PhotoResult, min_face_size: int, out_size: int) -> tuple[str, str]:
    """(status, reason) of a finished photo from its face counts."""
    skipped = []
    if result.faces_skipped_small:
        skipped.append(f"{result.faces_skipped_small} below the minimum face size {min_face_size} px")
    if result.faces_skipped_landmarks:
        skipped.append(f"{result.faces_skipped_landmarks} with implausible landmarks")
    if result.faces_skipped_off_centre:
        skipped.append(f"{result.faces_skipped_off_centre} off-centre (--only-center-face)")
    too_large = ""
    if result.faces_skipped_too_large:
        count = result.faces_skipped_too_large
        left = "1 left as it was (--force restores it" if count == 1 else \
            f"{count} left as they were (--force restores them"
        too_large = f"{resolution_too_low(out_size, result.too_large_sizes)}: {left} anyway)"
    if result.faces_restored:
        detail = "; ".join([*skipped, *([too_large] if too_large else [])])
        return STATUS_OK, f"skipped: {detail}" if detail else ""
    if not result.faces_found:
        return STATUS_NO_FACE, "dlib found no face; photo copied through"
    if too_large:  # the resolution is what kept the usable faces from being restored: say that first
        return STATUS_RESOLUTION_TOO_LOW, "; ".join([too_large, *skipped, "photo copied through"])
    status = STATUS_TOO_SMALL if result.faces_skipped_small == result.faces_found else STATUS_NO_USABLE_FACE
    return status, f"{'; '.join(skipped)}; photo copied through"


def write_summary(out_dir: Path, results: Sequence[PhotoResult], run_info: dict) -> dict:
    """summary.json (the run and every row, with notes and crops) and summary.csv; returns the summary."""
    summary = {"run": run_info, "photos": [{c: asdict(r)[c] for c in (*SUMMARY_COLUMNS, "notes", "crops")}
                                           for r in results]}
    write_json_atomic(out_dir / SUMMARY_JSON, summary)
    write_csv_atomic(out_dir / SUMMARY_CSV, SUMMARY_COLUMNS, [result.row() for result in results])
    return summary
