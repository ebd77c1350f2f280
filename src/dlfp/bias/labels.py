"""FFHQ attribute labels (gender, age) for the bias groupings, joined on ffhq_id.

A face without a label is in the group "unknown": it stays in every table. May import nothing from dlfp.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

UNKNOWN = "unknown"             # no label for this face


def read_labels(path: Path | None) -> tuple[dict[int, dict[str, object]], str]:
    """{ffhq_id: {"gender", "age"}} and a note saying where the labels came from (or why there are none)."""
    if path is None:
        return {}, "no labels file configured (bias.labels: null)"
    path = Path(path)
    if not path.is_file():
        return {}, f"labels file {path} not found: gender and age are '{UNKNOWN}'"
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise ValueError(f"{path}: unreadable labels CSV ({error})") from None
    missing = {"ffhq_id", "gender", "age"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: labels CSV lacks the column(s) {sorted(missing)}")
    labels: dict[int, dict[str, object]] = {}
    for row in frame.itertuples(index=False):
        try:
            ffhq_id = int(row.ffhq_id)
        except ValueError:
            continue   # a row for a non-FFHQ file: no id to join on
        try:
            age: float | None = float(row.age)
        except ValueError:
            age = None
        labels.setdefault(ffhq_id, {"gender": str(row.gender).strip() or UNKNOWN,
                                    "age": age if age is not None and math.isfinite(age) else None})
    return labels, f"{len(labels)} FFHQ ids with labels from {path}"


def age_group(age: float | None, bins: Mapping[str, tuple[float, float]]) -> str:
    if age is None:
        return UNKNOWN
    for name, (low, high) in bins.items():
        if low <= age < high:
            return name
    return UNKNOWN


def ffhq_id_of(meta: Mapping) -> int | None:
    """The FFHQ id a sample's metadata names, or None (not an FFHQ face, or no id): the key labels join on."""
    value = meta.get("ffhq_id")
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None
