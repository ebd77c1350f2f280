"""What a run leaves to read while and after it trains: losses.csv (+ TensorBoard), other per-step CSV files
(validation.csv) and the sample grid PNGs.

May import dlfp.io.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import make_grid

from dlfp.io.atomic import csv_safe, write_bytes_atomic
from dlfp.io.images import encode_png

log = logging.getLogger(__name__)

LOSSES_CSV = "losses.csv"
TENSORBOARD_DIR = "tensorboard"


class LossLog:
    """losses.csv (one row per step, for `dvc plots`) and TensorBoard scalars when tensorboard imports."""

    def __init__(self, work_dir: Path, columns: list[str], start_step: int, tensorboard: bool = True) -> None:
        self.path = Path(work_dir) / LOSSES_CSV
        self.columns = columns
        truncate_csv_rows(self.path, start_step)
        new_file = not self.path.exists()
        self._handle = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._writer = csv.writer(self._handle, lineterminator="\n")
        if new_file:
            self._writer.writerow(["step", *columns])
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(work_dir) / TENSORBOARD_DIR), purge_step=start_step + 1)
            except ImportError:
                log.info("tensorboard is not installed; losses go to %s only", self.path)

    def write(self, step: int, values: Mapping[str, float]) -> None:
        self._writer.writerow([step, *(_fmt(values.get(c)) for c in self.columns)])
        self._handle.flush()  # one short line per step: readers (dvc plots, tail -f) see it at once
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(f"loss/{name}", value, step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._tb is not None:
            self._tb.add_scalar(tag, value, step)

    def flush(self) -> None:
        self._handle.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self._handle.close()
        if self._tb is not None:
            self._tb.close()


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def truncate_csv_rows(path: Path, last_step: int) -> None:
    """Drop the rows of a per-step CSV (first column: step) after the checkpoint's step: a resumed run rewrites them."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = lines[:1] + [line for line in lines[1:] if line.split(",", 1)[0].isdigit()
                        and int(line.split(",", 1)[0]) <= last_step]
    path.write_text("".join(kept), encoding="utf-8")


def append_csv_row(path: Path, header: list[str], row: list[object]) -> None:
    """Append one row (writing the header first for a new file), e.g. validation.csv."""
    new_file = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        if new_file:
            writer.writerow(header)
        writer.writerow([csv_safe(cell) for cell in row])


@torch.no_grad()
def save_image_grid(path: Path, rows: list[Tensor]) -> None:
    """Rows of (N, 3, S, S) images in [-1, 1] -> one PNG (rows stacked vertically, no padding), written atomically.

    Smaller rows are scaled up (nearest) to the largest size; every row must hold the same number of images."""
    size = max(r.shape[-1] for r in rows)
    rows = [torch.nn.functional.interpolate(r.float().cpu(), size=(size, size), mode="nearest")
            if r.shape[-1] != size else r.float().cpu() for r in rows]
    grid = make_grid(torch.cat(rows), nrow=len(rows[0]), padding=0)  # (3, rows*S, N*S)
    image = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    write_bytes_atomic(path, encode_png(image))
