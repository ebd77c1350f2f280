"""training.html's "Does the prior help? (ablation)" section, from a small prior_ablation.json in tmp_path: the
table with every figure and interval, the claim and the run's settings, escaped; and "not computed" with the
reason for a missing, damaged or wrong-shaped file, the page rendering all the same."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from dlfp.params import parse_params
from dlfp.report import PageContext, make_env, training_page

SCRIPT = "<script>alert(1)</script>"
SCRIPT_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def figures(psnr: float, ssim: float, rank1: float, spread: float) -> dict[str, float]:
    out = {}
    for key, value, width in (("psnr", psnr, spread), ("ssim", ssim, spread / 100), ("rank1_accuracy", rank1,
                                                                                        spread / 10)):
        out.update({key: value, f"{key}_ci_low": value - width, f"{key}_ci_high": value + width})
    return out


ABLATION = {
    "split": "val", "steps": 1300, "seed": 20260101, "command": "python benchmarks/prior_ablation.py --steps 1300",
    "measured": "2026-12-03T15:00:00+00:00", "machine": f"2 cores {SCRIPT}",
    "arms": {"trained_prior": {"label": "decoder initialised from the trained prior (models/prior/prior.pth)"},
             "random_decoder": {"label": "decoder randomly initialised (same seed)"}},
    "presets": {
        "mild": {"count": 105, "trained_prior": figures(26.1, 0.81, 0.90, 0.3),
                 "random_decoder": figures(25.8, 0.80, 0.88, 0.3), "difference": figures(0.3, 0.01, 0.02, 0.2)},
        "severe": {"count": 98, "trained_prior": figures(22.0, 0.60, 0.50, 0.4),
                   "random_decoder": figures(22.5, 0.62, 0.55, 0.4), "difference": figures(-0.5, -0.02, -0.05, 0.1)},
    },
    "claim": f"Two training runs of one seed on these val faces {SCRIPT}; not the population.",
}


def render(tmp_path: Path, ablation: str | None) -> str:
    params = parse_params({"data": {"folder": "faces"}, "report": {"prior_ablation": ablation}})
    return training_page.render(PageContext(params, tmp_path / "data", tmp_path / "reports", make_env(),
                                            models_dir=tmp_path / "models"))


def section(html: str) -> str:
    assert html.count('<h2 id="prior-ablation">Does the prior help? (ablation)</h2>') == 1
    return html.split('<h2 id="prior-ablation">', 1)[1]


def write(tmp_path: Path, document: object) -> str:
    path = tmp_path / "prior_ablation.json"
    path.write_text(json.dumps(document) if not isinstance(document, str) else document, encoding="utf-8")
    return str(path)


def test_the_table_shows_both_arms_and_the_paired_difference_with_intervals(tmp_path: Path) -> None:
    html = section(render(tmp_path, write(tmp_path, ABLATION)))
    table = html.split('<table id="prior-ablation-table">', 1)[1].split("</table>", 1)[0]
    rows = [[re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", cell)).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>",
                                                                                              row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", table, re.S) if "<td" in row]
    assert rows[0] == ["mild", "105",
                       "26.10 [25.80, 26.40]", "25.80 [25.50, 26.10]",
                       "+0.30 [0.10, 0.50] the trained prior scores higher",
                       "0.8100 [0.8070, 0.8130]", "0.8000 [0.7970, 0.8030]",
                       "+0.0100 [0.0080, 0.0120] the trained prior scores higher",
                       "0.900 [0.870, 0.930]", "0.880 [0.850, 0.910]",
                       "+0.020 [0.000, 0.040] level (difference within noise)"]
    assert rows[1][:5] == ["severe", "98", "22.00 [21.60, 22.40]", "22.50 [22.10, 22.90]",
                           "-0.50 [-0.60, -0.40] the random decoder scores higher"]
    assert "decoder initialised from the trained prior (models/prior/prior.pth)" in html
    claim = html.split('id="prior-ablation-claim">', 1)[1].split("</p>", 1)[0]
    assert f"on these val faces {SCRIPT_ESCAPED}; not the population." in claim
    assert SCRIPT not in html and f"2 cores {SCRIPT_ESCAPED}" in html
    for key, value in (("split", "val"), ("steps", "1300"), ("seed", "20260101"),
                       ("command", "<code>python benchmarks/prior_ablation.py --steps 1300</code>"),
                       ("measured", "2026-12-03T15:00:00+00:00")):
        assert f"<tr><th>{key}</th><td>{value}</td></tr>" in html


def test_a_missing_file_is_not_computed_and_names_the_command(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere" / "prior_ablation.json")
    html = section(render(tmp_path, missing))
    assert (f'<p class="missing">not computed: {missing} does not exist (the ablation has not been run: run '
            "benchmarks/prior_ablation.py as the README says)</p>") in html
    assert "prior-ablation-table" not in html


def broken(change) -> dict:
    document = copy.deepcopy(ABLATION)
    change(document)
    return document


@pytest.mark.parametrize(("content", "reason"), [
    ("{broken", "unreadable (JSONDecodeError: "),
    ([1, 2], "not a JSON object"),
    (broken(lambda d: d.pop("presets")), "presets is missing or not an object"),
    (broken(lambda d: d["presets"]["severe"].pop("difference")), "presets.severe.difference is missing or not an"),
    (broken(lambda d: d["presets"]["mild"]["difference"].pop("psnr_ci_low")),
     "presets.mild.difference.psnr_ci_low is not a finite number (null)"),
    (broken(lambda d: d["presets"]["mild"]["random_decoder"].update(ssim="0.8")),
     "presets.mild.random_decoder.ssim is not a finite number (&#34;0.8&#34;)"),
    (broken(lambda d: d["presets"]["mild"]["trained_prior"].update(psnr=30.0)),
     "presets.mild.trained_prior.psnr: the interval [25.8, 26.4] does not hold the value 30"),
    (broken(lambda d: d.update(claim="")), "claim (what the numbers can and cannot claim) is missing or empty"),
])
def test_a_damaged_or_wrong_shaped_file_is_not_computed_with_the_reason(tmp_path: Path, content: object,
                                                                        reason: str) -> None:
    path = write(tmp_path, content)
    html = section(render(tmp_path, path))
    assert f'<p class="missing">not computed: {path}: {reason}' in html
    assert "prior-ablation-table" not in html


def test_null_shows_no_section(tmp_path: Path) -> None:
    html = render(tmp_path, None)
    assert "Does the prior help?" not in html and "Stage <code>train_prior</code>" in html
