"""Planted-shift self-test of the bias analysis: synthetic restorers on real faces, with a known answer.

The skin of each real face (../shared/faces) is measured once, by the stage's own measure_gt (landmarks, mask,
GT band and correction). The synthetic restorers then change only the skin pixels:
- "null": per face a symmetric tone change, ITA moved by N(0, NULL_SD_DEG), plus pixel noise in L*: no shift;
- "planted": the null restorer plus +PLANTED_DEG of ITA on the faces of ONE skin-tone group.
Every restored face goes through the stage's functions (face_shift, the per-face table, analyse_set and
compact_summary) without shards or files. The analysis must flag exactly the planted group and nothing under
the null; over NULL_SEEDS null seeds the false-positive rate must stay near the nominal 5%.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from _dlfp_test_faces import FACES  # tests/_faces.py, registered by conftest.py
from skimage.color import lab2rgb, rgb2lab

from dlfp.bias import analysis as bias_analysis
from dlfp.bias import faces as bias_faces
from dlfp.bias import skin
from dlfp.io.images import load_rgb
from dlfp.params import parse_params

REPO = Path(__file__).resolve().parents[1]
FACE_COUNT = 120
SIZE = 128
PRESET = "planted"
NULL_SD_DEG = 0.5          # per-face ITA noise of the null restorer (symmetric: no tone change on average)
PIXEL_SD_L = 1.0           # per-pixel L* noise on top
PLANTED_DEG = 2.0          # the planted lightening, in ITA degrees, on one group only
NULL_SEEDS = 20
# Holm keeps the chance that a null run flags any skin-tone group at or below alpha = 0.05 (the sign test is
# exact, hence conservative, and a flag also needs the CI to exclude 0). Flagged runs out of 20 are then at most
# Binomial(20, 0.05): P(X >= 4) = 0.016, so more than 3 flagged runs means the error rate is above nominal.
MAX_FLAGGED_NULL_RUNS = 3
ALPHA = 0.05


def _params():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["bias"].update(min_group_size=15, resamples=500, worst_cases=0, examples=0)
    return parse_params(raw)


class Measured:
    """The real faces, measured once: GT images, FaceTone per id, plain GT tone, merged groups."""

    def __init__(self) -> None:
        from dlfp.faces.landmarks import FaceLandmarker

        self.params = _params()
        landmarker = FaceLandmarker("hog", upsample=0)
        self.gt: dict[str, np.ndarray] = {}
        self.faces: dict[str, bias_faces.FaceTone] = {}
        self.plain: dict[str, skin.ToneMeasurement] = {}
        for path in sorted(FACES.glob("ffhq256_*.jpg"))[:FACE_COUNT]:
            full = load_rgb(path)
            boxes = landmarker.detect(full)
            if not boxes:
                continue
            points = (landmarker.landmarks(full, boxes[0]) + 0.5) * SIZE / full.shape[1] - 0.5
            image = cv2.resize(full, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
            face = bias_faces.measure_gt(path.stem, {"landmarks": points.tolist()}, image, "test",
                                         self.params.bias, {})
            if face.measured is None:
                continue
            self.gt[path.stem], self.faces[path.stem] = image, face
            self.plain[path.stem] = skin.measure_tone(image, face.mask)
        self.ids = sorted(self.faces)
        self.assigned, self.group_info = bias_analysis.merge_groups(self.faces, self.ids, self.params.bias)
        self.composition = bias_faces.composition(self.faces, self.params.bias.age_bins)

    def retone(self, sample_id: str, delta_ita: float, rng: np.random.Generator) -> np.ndarray:
        """The GT with its skin's L* moved so that the plain ITA changes by delta_ita, plus pixel noise."""
        gt, mask, tone = self.gt[sample_id], self.faces[sample_id].mask, self.plain[sample_id]
        target_l = 50.0 + tone.b_star * math.tan(math.radians(tone.ita_deg + delta_ita))
        lab = rgb2lab(gt[mask].reshape(-1, 1, 3) / 255.0).reshape(-1, 3)
        lab[:, 0] += target_l - tone.l_star + rng.normal(0.0, PIXEL_SD_L, len(lab))
        restored = gt.copy()
        restored[mask] = np.round(np.clip(lab2rgb(lab.reshape(-1, 1, 3)).reshape(-1, 3), 0, 1) * 255)
        return restored

    def analyse(self, name: str, seed: int, planted_group: str | None = None) -> tuple[bias_analysis.Analysis, dict]:
        """Run one synthetic restorer over every face and the stage's analysis over the result."""
        rng = np.random.default_rng(seed)
        rows = []
        for sample_id in self.ids:
            delta = rng.normal(0.0, NULL_SD_DEG)
            if self.assigned["skin_tone"][sample_id] == planted_group:
                delta += PLANTED_DEG
            restored = self.retone(sample_id, delta, rng)
            columns, _ = bias_faces.face_shift(self.gt[sample_id], restored, self.faces[sample_id])
            rows.append({"preset": PRESET, "restorer": name, "id": sample_id, **columns})
        shift = pd.DataFrame(rows, columns=bias_analysis.SHIFT_COLUMNS)
        evaluation = pd.DataFrame({"preset": PRESET, "restorer": name, "id": self.ids,
                                   **{metric: math.nan for metric in (*bias_analysis.EVAL_METRICS,
                                                                      "landmarks_detected")}})
        table = bias_analysis.per_face_table(shift, evaluation, self.faces, self.assigned)
        analysis = bias_analysis.Analysis()
        reasons = {metric: "not computed: synthetic restorer" for metric in bias_analysis.EVAL_METRICS}
        bias_analysis.analyse_set(table, PRESET, name, self.group_info, self.params, reasons, analysis)
        summary = bias_analysis.compact_summary(analysis, self.composition, "both", [PRESET], [name])
        return analysis, summary["results"][PRESET][name]


def flagged_groups(analysis: bias_analysis.Analysis) -> set[str]:
    """Skin-tone groups the report calls shifted: Holm sign-test p < alpha and a CI that excludes 0."""
    return {row["group"] for row in analysis.tone if row["grouping"] == "skin_tone" and row["flagged"]}


@pytest.fixture(scope="module")
def measured() -> Measured:
    if len(sorted(FACES.glob("ffhq256_*.jpg"))) < FACE_COUNT:
        pytest.skip(f"fewer than {FACE_COUNT} faces in {FACES}")
    result = Measured()
    compared = [g for g, info in result.group_info["skin_tone"].items() if info["compared"]]
    assert len(result.ids) >= 100 and len(compared) >= 3, (len(result.ids), compared)
    return result


@pytest.mark.slow
def test_planted_lightening_is_found_in_its_group_only(measured: Measured) -> None:
    info = measured.group_info["skin_tone"]
    planted = max((g for g in info if info[g]["compared"]), key=lambda g: info[g]["n"])
    analysis, summary = measured.analyse("planted", seed=0, planted_group=planted)
    assert flagged_groups(analysis) == {planted}
    row = next(r for r in analysis.tone if r["grouping"] == "skin_tone" and r["group"] == planted)
    assert row["sign_p_holm"] < ALPHA and row["ci_low"] > 0 and row["verdict"] == "lightened"
    assert row["median_d_ita"] == pytest.approx(PLANTED_DEG, abs=0.5)
    # The headline gap of |dITA| picks the planted group as the worst, and survives Holm over the groupings.
    headline = summary["largest_gap"]["abs_d_ita"]
    assert (headline["grouping"], headline["worst"]) == ("skin_tone", planted)
    assert headline["p_holm"] < ALPHA and headline["family_size"] >= 2


@pytest.mark.slow
def test_null_restorer_flags_nothing_and_false_positives_stay_nominal(measured: Measured) -> None:
    flagged_runs, headline_runs = [], []
    for seed in range(NULL_SEEDS):
        analysis, summary = measured.analyse("null", seed=1000 + seed)
        if seed == 0:
            assert flagged_groups(analysis) == set()
        flagged_runs.append(bool(flagged_groups(analysis)))
        headline_runs.append(summary["largest_gap"]["abs_d_ita"]["p_holm"] < ALPHA)
    rate, headline_rate = np.mean(flagged_runs), np.mean(headline_runs)
    print(f"null restorer over {NULL_SEEDS} seeds: tone-shift false-positive rate {rate:.2f} "
          f"({sum(flagged_runs)} runs flagged a group), headline |dITA| gap {headline_rate:.2f}")
    assert sum(flagged_runs) <= MAX_FLAGGED_NULL_RUNS, flagged_runs
    assert sum(headline_runs) <= MAX_FLAGGED_NULL_RUNS, headline_runs
