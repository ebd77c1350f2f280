"""The prior's face measurement (dlfp.train.prior_metrics) on inputs whose answer is known without it.

Real FFHQ faces downscaled to the prior's 64 px must be detected and sit at the real-vs-real FD floor; noise and
flat grey images contain no face, so nothing may be detected and their FD must be far above the floor.
"""

from __future__ import annotations

import csv
from pathlib import Path

import _dlfp_test_prereq as prereq  # tests/_prereq.py, registered by conftest.py
import cv2
import numpy as np
import pytest
import torch
from _dlfp_test_faces import FACES  # tests/_faces.py, registered by conftest.py
from pydantic import ValidationError

from dlfp.io.images import load_rgb
from dlfp.params import TrainPriorParams
from dlfp.train.prior_metrics import COLUMNS, MEASURED, NOISE_OFF, FaceMeasure, MetricsLog, eval_latents

FACE_FILES = sorted(FACES.glob("ffhq*.jpg"))
SIZE = 64  # the demo prior's resolution
REAL, HELD_OUT = 96, 48
Z_975 = 1.959963984540054  # two-sided 95% normal quantile


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    prereq.require(len(FACE_FILES) >= REAL + HELD_OUT, f"fewer than {REAL + HELD_OUT} FFHQ faces in {FACES}")
    return np.stack([cv2.resize(load_rgb(path), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
                     for path in FACE_FILES[:REAL + HELD_OUT]])


@pytest.fixture(scope="module")
def measure(faces: np.ndarray) -> FaceMeasure:
    torch.set_num_threads(1)
    return FaceMeasure(faces[:REAL])


def test_real_faces_at_the_prior_size_are_detected_and_sit_at_the_floor(faces: np.ndarray,
                                                                       measure: FaceMeasure) -> None:
    reference = measure.reference
    assert reference["n_real"] == REAL and reference["fd_n"] == [REAL // 2, REAL // 2]
    assert reference["detection_rate"] >= 0.9  # frontal FFHQ faces: HOG finds nearly all of them
    row = measure.measure(5, faces[REAL:])
    assert list(row) == list(COLUMNS)
    assert all(row[f"{name}{NOISE_OFF}"] == "" for name in MEASURED)  # no noise-free rendering given: empty cells
    assert row["step"] == 5 and row["n_samples"] == HELD_OUT and row["n_real"] == REAL // 2
    assert row["detection_rate"] >= 0.9
    assert row["ci_low"] < row["detection_rate"] <= row["ci_high"] <= 1.0
    # unseen real faces against one half: as far as the two halves are from each other, give or take n=48 noise
    assert 0 < row["fd_dlib"] < 1.5 * reference["fd_dlib"]


@pytest.mark.parametrize("kind", ["noise", "flat"])
def test_noise_and_flat_images_have_no_faces_and_a_large_fd(measure: FaceMeasure, kind: str) -> None:
    rng = np.random.default_rng(3)
    images = (rng.integers(0, 256, (HELD_OUT, SIZE, SIZE, 3), dtype=np.uint8) if kind == "noise"
              else np.full((HELD_OUT, SIZE, SIZE, 3), 128, np.uint8))
    row = measure.measure(0, images)
    assert row["detection_rate"] == 0.0 and row["ci_low"] == 0.0
    # Wilson upper bound for 0 successes in n trials: z^2 / (n + z^2)
    assert row["ci_high"] == pytest.approx(Z_975**2 / (HELD_OUT + Z_975**2), rel=1e-9)
    assert row["fd_dlib"] > 2 * measure.reference["fd_dlib"]


def test_the_noise_off_cells_measure_the_second_set_of_images(faces: np.ndarray, measure: FaceMeasure) -> None:
    flat = np.full((HELD_OUT, SIZE, SIZE, 3), 128, np.uint8)
    row = measure.measure(7, flat, noise_off=faces[REAL:])  # speckled samples whose noise-free rendering is a face
    alone = measure.measure(7, faces[REAL:])
    assert row["detection_rate"] == 0.0 and row[f"detection_rate{NOISE_OFF}"] >= 0.9
    for name in MEASURED:
        assert row[f"{name}{NOISE_OFF}"] == pytest.approx(alone[name], rel=1e-9)


def test_eval_latents_are_fixed_and_leave_the_global_rng_alone() -> None:
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = eval_latents(7, 8, 16)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(first, eval_latents(7, 8, 16)) and not torch.equal(first, eval_latents(8, 8, 16))
    assert torch.equal(eval_latents(7, 4, 16), first[:4])  # a smaller count measures a prefix of the same samples


def test_metrics_log_keeps_rows_up_to_the_resumed_step(tmp_path: Path) -> None:
    path = tmp_path / "prior_metrics.csv"
    log = MetricsLog(path, 0)
    off = {f"{name}{NOISE_OFF}": 0.5 for name in MEASURED}
    for step in (0, 2, 4):
        log.write({"step": step, "detection_rate": 0.5, "ci_low": 0.25, "ci_high": 0.75, "fd_dlib": 1.0 + step,
                   "n_samples": 8, "n_real": 4, **off})
    resumed = MetricsLog(path, 3)  # checkpoint at step 3: the row of step 4 is measured again
    resumed.write({"step": 4, "detection_rate": 0.125, "ci_low": 0.0, "ci_high": 0.5, "fd_dlib": 9.0,
                   "n_samples": 8, "n_real": 4, **off})
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "2", "4"] and lines[-1].split(",")[4] == "9"
    assert MetricsLog(path, 0).rows == []  # a fresh start never keeps old rows


def test_a_resumed_run_from_before_the_noise_off_columns_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "prior_metrics.csv"
    old = COLUMNS[:7]  # step .. n_real: the layout before the noise-off measurement
    assert old[-1] == "n_real"
    path.write_text(",".join(old) + "\n0,0,0,0.3,0.4,8,4\n300,0.125,0.02,0.47,0.35,8,4\n600,0,0,0.3,0.5,8,4\n")
    resumed = MetricsLog(path, 300)
    resumed.write({"step": 600, "detection_rate": 0.25, "ci_low": 0.07, "ci_high": 0.59, "fd_dlib": 0.3,
                   "n_samples": 8, "n_real": 4, **{f"{name}{NOISE_OFF}": 0.5 for name in MEASURED}})
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(COLUMNS) and [row["step"] for row in rows] == ["0", "300", "600"]
    assert rows[1]["fd_dlib"] == "0.35" and rows[1][f"fd_dlib{NOISE_OFF}"] == ""  # not measured then: empty
    assert rows[2][f"fd_dlib{NOISE_OFF}"] == "0.5"


@pytest.mark.parametrize("count", [1, 3])
def test_eval_samples_below_four_are_refused(count: int) -> None:
    with pytest.raises(ValidationError, match="eval_samples must be 0 .off. or at least 4"):
        TrainPriorParams(eval_samples=count)
    assert TrainPriorParams(eval_samples=0).eval_samples == 0
