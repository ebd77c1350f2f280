"""evaluation.html's "at a glance" verdicts on small synthetic evaluate outputs (summary.json, per_image.csv).

Each restorer is compared with the LQ input and with bicubic by the 95% interval of its paired per-face
difference: below (flagged), above, or level when the interval holds 0. The expected intervals are computed here
through other scipy routes (ttest_rel for PSNR/SSIM, binomtest for rank-1's McNemar interval).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
from scipy import stats

from dlfp.params import parse_params
from dlfp.report import PageContext, evaluation_page, make_env

FACES = 40
COLUMNS = ("preset", "restorer", "id", "psnr", "ssim", "rank1_correct")


def write_evaluation(data: Path, per_face: dict[str, dict[str, np.ndarray]], with_per_image: bool = True) -> None:
    """summary.json (means, rank-1 rates) and per_image.csv for one preset "mild" from per-face arrays."""
    folder = data / "evaluation"
    folder.mkdir(parents=True)
    results = {restorer: {"count": FACES, "status": "ok", "psnr": float(values["psnr"].mean()),
                          "ssim": float(values["ssim"].mean()), "rank1_accuracy": float(values["hits"].mean()),
                          "rank1_accuracy_ci_low": 0.0, "rank1_accuracy_ci_high": 1.0}
               for restorer, values in per_face.items()}
    (folder / "summary.json").write_text(json.dumps({"results": {"mild": results}}), encoding="utf-8")
    if with_per_image:
        with open(folder / "per_image.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            for restorer, values in per_face.items():
                for face in range(FACES):
                    writer.writerow(["mild", restorer, f"face{face:03d}", values["psnr"][face],
                                     values["ssim"][face], "true" if values["hits"][face] else "false"])


def glance_rows(tmp_path: Path, per_face: dict[str, dict[str, np.ndarray]],
                with_per_image: bool = True) -> tuple[str, dict[str, list[str]]]:
    """The rendered page and its at-a-glance rows by restorer: [preset, restorer, faces, psnr, ssim, rank-1,
    verdict], each cell's text with tags removed; a flagged row's restorer name is prefixed with '!'."""
    data = tmp_path / "data"
    write_evaluation(data, per_face, with_per_image)
    params = parse_params({"data": {"folder": "faces"}})
    html = evaluation_page.render(PageContext(params, data, tmp_path / "reports", make_env()))
    table = html.split('<table id="at-a-glance-table">', 1)[1].split("</table>", 1)[0]
    rows = {}
    for attributes, row in re.findall(r"<tr([^>]*)>(.*?)</tr>", table, re.S)[1:]:
        cells = [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", cell)).strip()
                 for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        rows[("!" if 'class="worse"' in attributes else "") + cells[1]] = cells
    return html, rows


def faces(psnr: np.ndarray, ssim: np.ndarray, hits: np.ndarray) -> dict[str, np.ndarray]:
    return {"psnr": psnr, "ssim": ssim, "hits": hits}


def paired_t(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float, float]:
    interval = stats.ttest_rel(ours, theirs).confidence_interval(0.95)
    return float(np.mean(ours - theirs)), float(interval.low), float(interval.high)


def test_a_restorer_below_the_lq_input_and_level_with_bicubic_is_flagged_below_lq_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lq_psnr, lq_ssim = rng.normal(26.0, 2.0, FACES), rng.normal(0.80, 0.05, FACES)
    hits = np.ones(FACES, dtype=bool)
    # gfpgan: 1.5 dB and 0.05 SSIM below the LQ input on every face (plus a little noise); bicubic: gfpgan's
    # values moved up and down by the same amount on alternate faces, so the paired mean difference is 0
    gfpgan_psnr, gfpgan_ssim = lq_psnr - 1.5 + rng.normal(0, 0.2, FACES), lq_ssim - 0.05 + rng.normal(0, 0.01, FACES)
    wobble = np.where(np.arange(FACES) % 2 == 0, 1.0, -1.0)
    per_face = {"lq": faces(lq_psnr, lq_ssim, hits),
                "bicubic": faces(gfpgan_psnr + 0.3 * wobble, gfpgan_ssim + 0.01 * wobble, hits),
                "gfpgan": faces(gfpgan_psnr, gfpgan_ssim, hits)}
    html, rows = glance_rows(tmp_path, per_face)
    _, _, _, psnr, ssim, rank1, verdict = rows["!gfpgan"]  # flagged
    assert verdict == ("below the LQ input on PSNR (dB), SSIM; level with the LQ input on rank-1 (difference within "
                       "noise); level with bicubic on PSNR (dB), SSIM, rank-1 (difference within noise)")
    value, low, high = paired_t(gfpgan_psnr, lq_psnr)
    assert f"{value:+.2f} dB [{low:.2f}, {high:.2f}] vs LQ" in psnr and high < 0
    value, low, high = paired_t(gfpgan_ssim, lq_ssim)
    assert f"{value:+.4f} [{low:.4f}, {high:.4f}] vs LQ" in ssim
    value, low, high = paired_t(gfpgan_psnr, gfpgan_psnr + 0.3 * wobble)
    assert f"{value:+.2f} dB [{low:.2f}, {high:.2f}] vs bicubic" in psnr and low < 0 < high
    assert "+0.000 [0.000, 0.000] vs LQ" in rank1 and "+0.000 [0.000, 0.000] vs bicubic" in rank1
    # the cells below a baseline are red, the others not
    gfpgan_row = re.search(r'<tr class="worse"><td>mild</td><td>gfpgan</td>(.*?)</tr>', html, re.S).group(1)
    assert [' worse"' in cell for cell in re.findall(r'<td class="num[^"]*"', gfpgan_row)[1:]] == [True, True, False]
    # bicubic is compared with the LQ input only, and it is below it too
    assert rows["!bicubic"][-1].startswith("below the LQ input on PSNR (dB), SSIM") and "vs bicubic" not in \
        " ".join(rows["!bicubic"])
    assert rows["lq"][-1] == "the LQ input itself (baseline)"
    claim = html.split('id="at-a-glance-claim">', 1)[1].split("</p>", 1)[0]
    assert "these test faces of this preset" in claim and "not a perceptual judgement" in claim
    assert "faces in general" in claim


def test_a_difference_within_noise_is_level_not_below(tmp_path: Path) -> None:
    """The restorer's mean is a little below the LQ input's, well within the face-to-face spread of the
    differences: level, and the row is not flagged (the old verdict compared the means and said 'below')."""
    rng = np.random.default_rng(1)
    lq_psnr, lq_ssim = rng.normal(26.0, 2.0, FACES), rng.normal(0.80, 0.05, FACES)
    hits = np.ones(FACES, dtype=bool)
    noise = rng.normal(0, 1.0, FACES)
    noise = noise - noise.mean() - 0.05  # mean difference exactly -0.05 dB, spread about 1 dB
    per_face = {"lq": faces(lq_psnr, lq_ssim, hits), "gfpgan": faces(lq_psnr + noise, lq_ssim + noise / 100, hits)}
    _, rows = glance_rows(tmp_path, per_face)
    assert "!gfpgan" not in rows
    _, _, _, psnr, _, _, verdict = rows["gfpgan"]
    assert verdict == "level with the LQ input on PSNR (dB), SSIM, rank-1 (difference within noise)"
    value, low, high = paired_t(lq_psnr + noise, lq_psnr)
    assert f"{value:+.2f} dB [{low:.2f}, {high:.2f}] vs LQ" in psnr and low < 0 < high and value < 0


def test_rank1_compares_hits_on_the_same_faces_with_the_exact_mcnemar_interval(tmp_path: Path) -> None:
    """12 faces the LQ input identifies and the restorer does not, 2 the other way: below on rank-1; 3 vs 1: level."""
    rng = np.random.default_rng(2)
    psnr, ssim = rng.normal(26.0, 2.0, FACES), rng.normal(0.80, 0.05, FACES)
    lq_hits = np.arange(FACES) < 30  # faces 0..29 hit
    worse_hits = lq_hits.copy()
    worse_hits[:12] = False  # loses 12
    worse_hits[30:32] = True  # wins 2
    near_hits = lq_hits.copy()
    near_hits[:1] = False
    near_hits[30:33] = True
    per_face = {"lq": faces(psnr, ssim, lq_hits), "bicubic": faces(psnr + 0.5, ssim, near_hits),
                "gfpgan": faces(psnr + 0.5, ssim, worse_hits)}
    _, rows = glance_rows(tmp_path, per_face)
    share = stats.binomtest(2, 14).proportion_ci(0.95, method="exact")
    low, high = (14 * (2 * bound - 1) / FACES for bound in (share.low, share.high))
    _, _, _, _, _, rank1, verdict = rows["!gfpgan"]
    assert f"{-10 / FACES:+.3f} [{low:.3f}, {high:.3f}] vs LQ" in rank1 and high < 0
    assert "below the LQ input on rank-1" in verdict
    assert "above the LQ input on PSNR (dB)" in verdict  # every face 0.5 dB up: no spread, the interval is [0.5, 0.5]
    share = stats.binomtest(3, 4).proportion_ci(0.95, method="exact")
    low, high = (4 * (2 * bound - 1) / FACES for bound in (share.low, share.high))
    assert f"{2 / FACES:+.3f} [{low:.3f}, {high:.3f}] vs LQ" in rows["bicubic"][5] and low < 0 < high


def test_without_per_face_rows_the_means_are_compared_and_it_says_so(tmp_path: Path) -> None:
    hits = np.ones(FACES, dtype=bool)
    per_face = {"lq": faces(np.full(FACES, 26.0), np.full(FACES, 0.8), hits),
                "gfpgan": faces(np.full(FACES, 25.0), np.full(FACES, 0.8), hits)}
    _, rows = glance_rows(tmp_path, per_face, with_per_image=False)
    _, _, _, psnr, _, _, verdict = rows["!gfpgan"]
    assert "-1.00 dB (means only: no paired faces) vs LQ" in psnr
    assert verdict.startswith("below the LQ input on PSNR (dB); level with the LQ input on SSIM, rank-1")
