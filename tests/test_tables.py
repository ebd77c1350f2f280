"""dlfp.io.tables: strict JSON values and clean CSV cells for stage outputs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from dlfp.io.tables import csv_cell, frame_records, jsonable, write_frame_csv


def test_jsonable_gives_strict_json_from_numpy_and_nan() -> None:
    value = {1: [np.float32(0.1234567891), np.int64(7), np.bool_(True)], "bad": (math.nan, -math.inf), "s": None}
    cleaned = jsonable(value)
    assert cleaned == {"1": [0.123457, 7, True], "bad": [None, None], "s": None}
    assert type(cleaned["1"][1]) is int and type(cleaned["1"][2]) is bool
    json.dumps(cleaned, allow_nan=False)   # raises on NaN or numpy scalars


def test_frame_records_and_csv_cells(tmp_path: Path) -> None:
    frame = pd.DataFrame({"name": ["a", "b"], "value": [1.23456789, np.nan], "flag": [True, False]})
    assert frame_records(frame) == [{"name": "a", "value": 1.234568, "flag": True},
                                    {"name": "b", "value": None, "flag": False}]
    assert [csv_cell(v) for v in (np.nan, None, True, np.bool_(False), 2.0000004, "x")] == \
        ["", "", "true", "false", 2.0, "x"]
    write_frame_csv(tmp_path / "t.csv", frame)
    with open(tmp_path / "t.csv", newline="", encoding="utf-8") as handle:
        assert list(csv.reader(handle)) == [["name", "value", "flag"], ["a", "1.234568", "true"],
                                            ["b", "", "false"]]
