"""Clean tables and JSON documents for stage outputs: strict JSON (no NaN), rounded numbers, frames as CSV.

Strict JSON has no NaN or infinity and json cannot write numpy scalars, so every value a stage puts into a
document goes through `jsonable`; CSV cells are rounded the same way and written atomically. May import
dlfp.io.atomic only (and numpy, pandas).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from dlfp.io.atomic import write_csv_atomic

DECIMALS = 6


def finite(value: object) -> float | None:
    """JSON-safe number: NaN and infinities become null (strict JSON has no NaN)."""
    if value is None or isinstance(value, bool):
        return value  # type: ignore[return-value]
    number = float(value)  # type: ignore[arg-type]
    return round(number, DECIMALS) if math.isfinite(number) else None


def jsonable(value: object) -> object:
    """Mappings, sequences and numpy scalars as plain JSON values, floats rounded, NaN as null."""
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return finite(value)
    return value


def frame_records(frame: pd.DataFrame) -> list[dict]:
    """The rows of a frame as JSON-safe dicts."""
    return [jsonable(row) for row in frame.to_dict(orient="records")]  # type: ignore[misc]


def csv_cell(value: object) -> object:
    """Booleans as true/false, floats rounded, NaN and None as an empty cell."""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        return "" if not math.isfinite(float(value)) else round(float(value), DECIMALS)
    return "" if value is None else value


def write_frame_csv(path: Path, frame: pd.DataFrame) -> None:
    """A frame as an atomically written CSV, its cells cleaned by `csv_cell`."""
    write_csv_atomic(path, list(frame.columns), [[csv_cell(v) for v in row] for row in frame.itertuples(False)])
