"""training.html and evaluation.html on the outputs of the real stages, run on a few real faces at 64 px.

One module fixture runs shard -> degrade -> train_prior -> train -> restore -> evaluate on 20 faces from
../shared/faces (tiny networks, a few steps), under a folder whose name holds a <script> tag, with one face id
that carries an attribute-injection payload. The pages are then checked for their numbers against the stage
outputs, for escaping, for the not-run and not-computed messages, and in headless Chromium.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import _dlfp_test_browser as browser  # tests/_browser.py, registered by conftest.py
import _dlfp_test_faces as faces  # tests/_faces.py, registered by conftest.py
import _dlfp_test_prereq as prereq  # tests/_prereq.py, registered by conftest.py
import numpy as np
import pytest
import torch
from markupsafe import escape as html_escape
from PIL import Image
from scipy import stats

from dlfp.params import Params, parse_params
from dlfp.report import evaluation_tables, training_page
from dlfp.shards.format import hash_split
from dlfp.stages import evaluate as evaluate_stage
from dlfp.stages import report as report_stage
from dlfp.stages import restore as restore_stage
from dlfp.stages import train as train_stage
from dlfp.stages import train_prior as train_prior_stage
from dlfp.stages.evaluate import page_assets
from dlfp.train import gfpgan, prior

TESTS = Path(__file__).resolve().parent
SIZE = 64
FACE_COUNT = 20
PRESETS = ("moderate", "paper")
SCRIPT = "<script>alert(1)</script>"
SCRIPT_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
HOSTILE_ID = 'face<img src=x onerror=alert(1)>"q"&'  # "/" cannot be in a tar key, so no <script> here
HOSTILE_ID_ESCAPED = "face&lt;img src=x onerror=alert(1)&gt;&#34;q&#34;&amp;"
SPLIT_FRACTIONS = {"train": 0.4, "val": 0.2, "test": 0.4}  # val > 0: training validates on val pairs
PAGES = ("index.html", "data.html", "training.html", "evaluation.html", "model.html")


def _load(name: str) -> ModuleType:
    """tests/ is not a package (pyiqa installs a top-level `tests`): load a sibling module by path."""
    module_name = f"_dlfp_test_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, TESTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


train_tests = _load("test_train")  # the tiny network and quiet loader settings of the training tests


def make_params(root: Path, weights: Path, **report: int) -> Params:
    return parse_params({
        "seed": 7,
        "data": {"source": "folder", "folder": f"faces/{SCRIPT}", "size": SIZE},
        "shard": {"split": "hash", "fractions": SPLIT_FRACTIONS, "samples_per_shard": 8},
        "degrade": {"workers": 1, "presets": {"moderate": {"blur_sigma": [1.0, 3.0], "downscale": [2.0, 3.0]},
                                              "paper": {}}},
        "train_prior": {**train_tests.TINY_NET, **train_tests.QUIET, "iters": 3, "checkpoint_every": 100,
                        "sample_every": 2, "eval_samples": 8},
        "train": {**train_tests.QUIET, "iters": 4, "checkpoint_every": 100, "sample_every": 2, "val_every": 2,
                  "perceptual_network": "off", "identity_network": "dlib", "r1_interval": 2, "val_preset": "moderate",
                  "val_count": 4},
        "restore": {"weights": str(weights), "device": "cpu", "threads": 1, "batch_size": 4},
        "evaluate": {"device": "cpu", "threads": 1, "batch_size": 8, "headline_preset": "paper"},
        "report": {"samples_in_grid": 2, "pairs_per_preset": 3, **report},
    })


def hostile_test_id() -> str:
    """HOSTILE_ID plus the first digit that puts it in the test split (hash split), so every page shows it."""
    for digit in range(100):
        candidate = f"{HOSTILE_ID}{digit}"
        if hash_split(candidate, SPLIT_FRACTIONS) == "test":
            return candidate
    raise AssertionError("no test-split variant of the hostile id")


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """No pyiqa or VGG weights: LPIPS, NIQE and FID must come out 'not computed' with the file named."""
    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, torch_home: Path) -> dict[str, Path]:
    """Every stage up to evaluate, for real, then the report."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pages") / SCRIPT  # a folder name with a <script> tag in every path
    data, models, reports = root / "data", root / "models", root / "reports"
    params = make_params(root, models / "gfpgan" / gfpgan.MODEL_FILE)
    # FACE_COUNT real faces, no landmarks (landmark metrics are 'not computed'), the first one with the hostile id
    ids = [hostile_test_id()] + [f"face_{number:03d}" for number in range(1, FACE_COUNT)]
    faces.build(data, params, faces.face_paths(FACE_COUNT, "*.png"), SIZE, ids=ids)
    train_prior_stage.run(params, data / "shards", models / "prior")
    train_stage.run(params, data / "shards", models / "prior" / prior.PRIOR_FILE, data / "pairs", models / "gfpgan")
    restore_stage.run(params, data / "pairs", data / "restored")
    evaluate_stage.run(params, data / "pairs", data / "restored", data / "evaluation", reports / "metrics.json")
    report_stage.run(params, data, reports, models_dir=models)
    return {"root": root, "data": data, "models": models, "reports": reports}


def page(pipeline: dict[str, Path], name: str) -> str:
    return (pipeline["reports"] / name).read_text(encoding="utf-8")


def cell_texts(html: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", html, re.S)]


# -------------------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_training_page_shows_curves_grids_and_active_losses(pipeline: dict[str, Path]) -> None:
    html = page(pipeline, "training.html")
    assert "not run yet" not in html
    images = browser.collect(html).images
    plots = [src for src in images if src.startswith("data:image/png")]
    assert len(plots) == 4  # prior losses, prior face measurement, gfpgan losses, validation
    grids = [src for src in images if src.startswith("training/")]
    # sample_every 2: prior steps 0 (initialisation), 2 and 3 (the last), gfpgan steps 2 and 4
    assert grids == ["training/prior-step-000000.png", "training/prior-step-000002.png",
                     "training/prior-step-000003.png",
                     "training/gfpgan-step-000002.png", "training/gfpgan-step-000004.png"]
    for grid in grids:
        copied = (pipeline["reports"] / grid).read_bytes()
        stage_folder = "prior" if "prior" in grid else "gfpgan"
        assert copied == (pipeline["models"] / stage_folder / "samples" / grid.split("-", 1)[1]).read_bytes()

    active = json.loads((pipeline["models"] / "gfpgan" / "losses_active.json").read_text())["terms"]
    with open(pipeline["models"] / "gfpgan" / "losses.csv", newline="") as handle:
        logged = list(csv.DictReader(handle))
    section = html.split('id="train-active"', 1)[1].split("</table>", 1)[0]
    rows = [cell_texts(row) for row in re.findall(r"<tr>(.*?)</tr>", section, re.S)[1:]]
    table = {row[0]: row[1:] for row in rows}
    assert set(active) <= set(table), table.keys()
    for term, (weight, paper, network, _source, steps, state, *_) in table.items():
        entry = active[term]
        assert float(weight) == entry["weight"], term
        assert float(paper) == training_page.PAPER_LOSS_WEIGHTS[term]
        count = sum(1 for row in logged if row[term] != "")
        assert int(steps) == count, term
        expected = "off (weight 0)" if entry["weight"] == 0 else "active" if count else "weight set but never logged"
        assert state == expected, term
        assert network == (str(entry.get("network")) if entry.get("network") else "—")
    assert table["pixel"][5] == "active" and table["identity"][2] == "dlib"
    assert table["perceptual"][5] == "off (weight 0)"  # perceptual_network off
    # no boxes in the shards: component losses have weight but never ran, and the page says so
    assert table["component_gan"][5] == "weight set but never logged"

    validation = list(csv.DictReader(open(pipeline["models"] / "gfpgan" / "validation.csv", newline="")))
    assert [row["step"] for row in validation] == ["2", "4"]
    cells = cell_texts(html)
    for row in validation:
        for column in ("psnr", "psnr_lq", "identity_match"):
            assert f"{float(row[column]):.6g}" in cells
    assert "models/gfpgan" not in html or SCRIPT_ESCAPED in html


def test_training_page_shows_the_prior_face_measurement_and_its_real_face_levels(pipeline: dict[str, Path]) -> None:
    html = page(pipeline, "training.html")
    folder = pipeline["models"] / "prior"
    with open(folder / "prior_metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["step"] for row in rows] == ["0", "2", "3"]
    reference = json.loads((folder / "prior_reference.json").read_text())
    real = reference["real_faces"]
    section = html.split('id="prior-faces"', 1)[1].split('id="train_prior-samples"', 1)[0]
    assert re.search(r'<img class="plot" src="data:image/png;base64,[^"]+" alt="face-detection rate', section)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", section))
    assert f"Real faces at this size: detection rate {real['detection_rate']:.3g}" in text
    assert f"{real['detected']} of {real['n_real']} train faces" in text
    assert f"(the floor): {real['fd_dlib']:.3g}" in text
    assert "not realism" in text and "biased upward" in text  # what the figures can and cannot claim
    cells = cell_texts(section)
    for row in rows:
        for column in ("detection_rate", "ci_low", "ci_high", "fd_dlib"):
            assert f"{float(row[column]):.6g}" in cells
    # each prior grid's caption carries that step's measurement
    for row in rows:
        n = int(row["n_samples"])
        found = round(float(row["detection_rate"]) * n)
        assert re.search(rf"<figcaption>step {row['step']}: on {n} measured samples \(not only these\): "
                         rf"faces detected {found}/{n} ", html)


def test_face_panels_draw_the_real_face_levels_as_reference_lines() -> None:
    import pandas as pd

    frame = pd.DataFrame({"step": [0, 5], "detection_rate": [0.0, 0.5], "ci_low": [0.0, 0.2], "ci_high": [0.3, 0.8],
                          "fd_dlib": [0.9, 0.4], "n_samples": [8, 8]})
    panels, references = training_page.face_panels(frame, {"detection_rate": 0.97, "fd_dlib": 0.14})
    (rate_title, (rate,)), (fd_title, (fd,)) = panels
    assert list(rate.y) == [0.0, 0.5] and [list(v) for v in rate.band] == [[0.0, 0.2], [0.3, 0.8]]
    assert list(fd.y) == [0.9, 0.4] and fd.band is None
    assert [(r.label, r.value) for r in references[rate_title]] == [("real faces at this size", 0.97)]
    assert [(r.label, r.value) for r in references[fd_title]] == [("real vs real (floor)", 0.14)]
    # the noise-off columns add a thin second line to each panel; empty cells (older runs) add none
    frame["detection_rate_noise_off"], frame["fd_dlib_noise_off"] = [0.25, 0.75], [0.6, 0.3]
    (_, (_, rate_off)), (_, (_, fd_off)) = training_page.face_panels(frame, {})[0]
    assert list(rate_off.y) == [0.25, 0.75] and list(fd_off.y) == [0.6, 0.3] and not rate_off.emphasis
    frame["detection_rate_noise_off"], frame["fd_dlib_noise_off"] = float("nan"), float("nan")
    assert [len(lines) for _, lines in training_page.face_panels(frame, {})[0]] == [1, 1]
    _, no_reference = training_page.face_panels(frame, {})
    assert no_reference == {rate_title: [], fd_title: []}


def test_training_page_before_training(tmp_path: Path) -> None:
    (tmp_path / "models" / "gfpgan.partial").mkdir(parents=True)
    report_stage.run(make_params(tmp_path, tmp_path / "absent.pth"), tmp_path / "data", tmp_path / "reports",
              models_dir=tmp_path / "models")
    html = (tmp_path / "reports" / "training.html").read_text(encoding="utf-8")
    assert "Stage <code>train_prior</code> not run yet" in html and "run <code>dvc repro train_prior</code>" in html
    assert "Stage <code>train</code> not run yet" in html and "run <code>dvc repro train</code>" in html
    assert "gfpgan.partial</code> exists" in html
    evaluation = (tmp_path / "reports" / "evaluation.html").read_text(encoding="utf-8")
    for stage, command in (("evaluate", "evaluate"), ("restore", "restore"), ("degrade", "degrade")):
        assert f"Stage <code>{stage}</code> not run yet" in evaluation
        assert f"run <code>dvc repro {command}</code>" in evaluation
    assert list((tmp_path / "reports" / "training").iterdir()) == []


def test_damaged_training_files_are_reported(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "gfpgan"
    (folder / "samples").mkdir(parents=True)
    (folder / "losses.csv").write_text("step,pixel\n1,0.5\nx,\n2,\n3,0.25\n", encoding="utf-8")
    (folder / "losses_active.json").write_text("{not json", encoding="utf-8")
    (folder / "samples" / "step-000001.png").write_bytes(b"not a png")
    (folder / "samples" / f"step-{HOSTILE_ID}.png").write_bytes(b"ignored: not a step file name")
    report_stage.run(make_params(tmp_path, tmp_path / "absent.pth"), tmp_path / "data", tmp_path / "reports",
              models_dir=tmp_path / "models")
    html = (tmp_path / "reports" / "training.html").read_text(encoding="utf-8")
    assert "1 row(s) without a numeric step were skipped" in html
    assert "losses_active.json: unreadable" in html and "receipt.json missing" in html
    assert "not a readable PNG" in html and "1 of 1 grids" in html
    assert re.search(r"<td>pixel</td><td class=\"num\">2</td><td class=\"num\">0.5</td>", html)


def test_a_skipped_face_measurement_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "prior"
    folder.mkdir(parents=True)
    (folder / "prior_reference.json").write_text(json.dumps({"skipped": f"only 3 train face(s) {SCRIPT}"}))
    report_stage.run(make_params(tmp_path, tmp_path / "absent.pth"), tmp_path / "data", tmp_path / "reports",
              models_dir=tmp_path / "models")
    html = (tmp_path / "reports" / "training.html").read_text(encoding="utf-8")
    assert f"face measurement skipped: only 3 train face(s) {SCRIPT_ESCAPED}" in html and SCRIPT not in html
    assert "No face measurement: <code>prior_metrics.csv</code> is missing or empty" in html


# ------------------------------------------------------------------------------------------------ evaluation
# The paper's Table 1 on CelebA-Test (gfpgan-spec section 6), written here literally rather than read from the
# page's constants: {metric key: (GFP-GAN, degraded input)}. Every other metric shows no paper number.
PAPER_TABLE_1 = {"psnr": (25.08, 25.35), "ssim": (0.6777, 0.6848), "lpips": (0.3646, 0.4866), "niqe": (4.077, None),
                 "fid": (42.62, 143.98), "identity_angle_deg": (34.60, None), "landmark_error_px": (2.41, None)}


def test_the_page_quotes_the_papers_table_1_as_published() -> None:
    quoted = {spec.key: (spec.paper_gfpgan, spec.paper_input) for spec in evaluation_tables.METRICS
              if spec.paper_gfpgan is not None or spec.paper_input is not None}
    assert quoted == PAPER_TABLE_1


@pytest.mark.slow
def test_metrics_tables_equal_the_evaluation_output(pipeline: dict[str, Path]) -> None:
    html = page(pipeline, "evaluation.html")
    summary = json.loads((pipeline["data"] / "evaluation" / "summary.json").read_text())
    results = summary["results"]
    assert set(results) == set(PRESETS)
    tables = re.findall(r"<h3 id=\"metrics-\d+\">Preset (\w+)</h3>.*?<table>(.*?)</table>(.*?)(?=<h3|</details>)",
                        html, re.S)
    assert [name for name, _, _ in tables] == ["moderate", "paper"]  # by severity, the paper's ranges last
    assert set(results) == {name for name, _, _ in tables}
    for preset, table, after in tables:
        header = re.findall(r"<th>([^<]*)</th>", table)
        with_paper = preset == "paper"
        restorers = header[2:-2] if with_paper else header[2:]
        assert restorers == ["lq", "bicubic", "gfpgan"]  # the LQ baseline first, then restore's order
        assert set(restorers) == set(results[preset])
        # the paper's CelebA-Test numbers stand beside preset `paper` only, labelled with their test set
        assert ("CelebA-Test" in table) == with_paper and ('class="footnote"' in after) == with_paper
        for spec in evaluation_tables.METRICS:
            label = re.escape(html_escape(spec.label))
            row = re.search(rf"<tr><td>{label}</td><td>(.)[^<]*</td>(.*?)</tr>", table, re.S)
            assert row, (preset, spec.key)
            assert row.group(1) == evaluation_tables.ARROWS[spec.direction]
            cells = cell_texts(row.group(2))
            for name, cell in zip(restorers, cells, strict=False):
                value = results[preset][name][spec.key]
                if isinstance(value, float):
                    assert cell.startswith(f"{value:.4f}"), (preset, name, spec.key, cell)
                elif isinstance(value, int):
                    assert cell.startswith(str(value)), (preset, name, spec.key, cell)
                else:  # a short mark in the cell; the reason is said once, above the tables
                    assert value.startswith("not computed: ") and cell == "n/c", (preset, name, spec.key)
            if spec.key in PAPER_TABLE_1 and with_paper:
                assert cells[len(restorers)] == f"{PAPER_TABLE_1[spec.key][0]:.4f}"
            assert len(cells) == len(restorers) + 2 * with_paper
    # pyiqa weights are absent: the reason names the missing file, once for the metric, not in every cell
    lpips = results["paper"]["gfpgan"]["lpips"]
    assert lpips.startswith("not computed: LPIPS_v0.1_alex") and lpips not in cell_texts(html)
    notes = re.findall(r'<p class="missing">(LPIPS: n/c in the tables below[^<]*)</p>', html)
    assert len(notes) == 1 and str(html_escape(lpips)) in notes[0]
    assert "no stored GT landmarks" in html
    # comparability: one footnote for the paper's table, none per row
    assert html.count("roughly only, differs in test set") == 1 and html.count("Not comparable: ") == 1
    assert "the paper&#39;s Deg. is the angle between ArcFace" in html and "resolution (64 px vs 512 px)" in html
    accuracy = results["paper"]["gfpgan"]["rank1_accuracy"]
    assert f"<b>{accuracy:.4f}</b>" in html


@pytest.mark.slow
def test_headline_is_rank1_with_its_interval_calibration_and_circularity(pipeline: dict[str, Path]) -> None:
    html = page(pipeline, "evaluation.html")
    summary = json.loads((pipeline["data"] / "evaluation" / "summary.json").read_text())
    accuracy = summary["accuracy"]
    headline = re.search(r'<p class="headline">(.*?)</p>', html, re.S).group(1)
    assert "rank-1 identification" in headline and f"<b>{accuracy['value']:.4f}</b>" in headline
    assert f"[{accuracy['ci_low']:.3f}, {accuracy['ci_high']:.3f}]" in headline and f"n = {accuracy['n']}" in headline
    # the demo trains its identity loss with dlib: said beside the number, in metrics.json and on the page
    active = json.loads((pipeline["models"] / "gfpgan" / "losses_active.json").read_text())["terms"]["identity"]
    assert active["network"] == "dlib" and active["weight"] > 0
    note = accuracy["identity_metric_circularity"]
    assert note.startswith("yes: trained with dlib's face network")
    assert json.loads((pipeline["reports"] / "metrics.json").read_text())["accuracy"]["identity_metric_circularity"] \
        == note
    after_headline = html.split('<p class="headline">', 1)[1].split("<h3", 1)[0]
    assert str(html_escape(note)) in after_headline
    # calibration: the numbers, the not-resolvable warning (few impostor pairs here) and the histogram
    calibration = accuracy["calibration"]
    section = html.split('<h3 id="calibration">', 1)[1].split("<h3", 1)[0]
    assert f"{calibration['far_at_threshold']:.4f} [{calibration['far_at_threshold_ci_low']:.4f}," in section
    assert f"{calibration['threshold_at_far_target']:.3f}" in section
    assert calibration["far_target_resolvable"] is False and "not resolvable" in section
    assert re.search(r'<img src="data:image/png;base64,[^"]+" alt="histogram of impostor distances', section)
    # rank-1 per preset and restorer, with intervals, and the colour spaces of PSNR and SSIM
    table = html.split('<h3 id="accuracy-table">', 1)[1].split("</table>", 1)[0]
    for preset in PRESETS:
        for restorer in ("lq", "bicubic", "gfpgan"):
            entry = summary["results"][preset][restorer]
            expected = (f"{entry['rank1_accuracy']:.4f} [{entry['rank1_accuracy_ci_low']:.3f}, "
                        f"{entry['rank1_accuracy_ci_high']:.3f}]")
            assert f"<td>{preset}</td><td>{restorer}</td>" in table and expected in table
    assert "PSNR (dB, RGB)" in html and "SSIM (Y of YIQ)" in html


def t_interval(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, float)
    return stats.t.interval(0.95, len(array) - 1, loc=array.mean(), scale=stats.sem(array))


@pytest.mark.slow
def test_at_a_glance_table_chart_and_gallery_come_first(pipeline: dict[str, Path]) -> None:
    """Preset x restorer with PSNR, SSIM (t-intervals over per_image.csv) and rank-1 (the stage's Wilson interval),
    each with the paired difference from the LQ input and bicubic, saying where a restorer is below either; the
    paper's rows beside preset `paper` only; then the chart, the gallery, and the details collapsed."""
    html = page(pipeline, "evaluation.html")
    summary = json.loads((pipeline["data"] / "evaluation" / "summary.json").read_text())
    results = summary["results"]
    with open(pipeline["data"] / "evaluation" / "per_image.csv", newline="", encoding="utf-8") as handle:
        per_image = list(csv.DictReader(handle))
    table = html.split('<table id="at-a-glance-table">', 1)[1].split("</table>", 1)[0]
    rows = [cell_texts(row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)[1:]]
    ours = [row for row in rows if not row[1].startswith("paper: ")]
    assert [(row[0], row[1]) for row in ours] == [(preset, restorer) for preset in ("moderate", "paper")
                                                   for restorer in ("lq", "bicubic", "gfpgan")]
    for preset, restorer, face_count, psnr, ssim, rank1, verdict in ours:
        entry = results[preset][restorer]
        assert face_count == str(entry["count"])
        for text, key, digits in ((psnr, "psnr", 2), (ssim, "ssim", 4)):
            low, high = t_interval([float(row[key]) for row in per_image
                                    if (row["preset"], row["restorer"]) == (preset, restorer)])
            assert text.startswith(f"{entry[key]:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"), \
                (preset, restorer, key)
            if restorer != "lq":  # the paired difference from the LQ input, on the same faces
                ours, theirs = ({row["id"]: float(row[key]) for row in per_image
                                 if (row["preset"], row["restorer"]) == (preset, name)} for name in (restorer, "lq"))
                paired = stats.ttest_rel([ours[face] for face in ours], [theirs[face] for face in ours])
                difference = float(np.mean([ours[face] - theirs[face] for face in ours]))
                interval = paired.confidence_interval(0.95)
                unit = " dB" if key == "psnr" else ""
                assert (f"{difference:+.{digits}f}{unit} [{interval.low:.{digits}f}, {interval.high:.{digits}f}] "
                        "vs LQ") in text, (preset, restorer, key)
        assert rank1.startswith(f"{entry['rank1_accuracy']:.3f} [{entry['rank1_accuracy_ci_low']:.3f}, "
                                f"{entry['rank1_accuracy_ci_high']:.3f}]")
        if restorer == "lq":
            assert verdict == "the LQ input itself (baseline)"
            continue
        # every figure is placed against each baseline: above, below or level; a loss is said, not hidden
        for label in ("the LQ input", "bicubic") if restorer == "gfpgan" else ("the LQ input",):
            for figure in ("PSNR (dB)", "SSIM", "rank-1"):
                assert re.search(rf"(above|below|level with) {label} on [^;]*{re.escape(figure)}", verdict), \
                    (preset, restorer, label, figure, verdict)
    paper_rows = [row for row in rows if row[1].startswith("paper: ")]
    assert [(row[0], row[3], row[4]) for row in paper_rows] == [("paper", "25.08", "0.6777"),
                                                                ("paper", "25.35", "0.6848")]
    assert all("CelebA-Test" in row[-1] for row in paper_rows)
    # order on the page: the table, the chart against severity, the gallery, then the details, collapsed
    order = [html.index(mark) for mark in ('id="at-a-glance-table"', 'alt="PSNR, SSIM and rank-1 against the severity',
                                           '<h2 id="gallery">', "<details")]
    assert order == sorted(order)
    assert re.search(r'<img src="data:image/png;base64,[^"]+" alt="PSNR, SSIM and rank-1 against the severity', html)
    assert html.count("<details") == 6 and "<details open" not in html


@pytest.mark.slow
@prereq.needs(browser.chromium() is not None,
              "chromium not installed (make setup installs it: apt-get install -y chromium)")
def test_no_page_overflows_at_any_width_and_the_headline_is_on_the_first_screen(
        pipeline: dict[str, Path], tmp_path: Path) -> None:
    """Every page at 1000 px, 1600 px and a phone's 390 px: nothing spills out of its table cell or past the viewport
    (scroll boxes excepted, every <details> opened), and evaluation.html's at-a-glance table starts on the first
    screen. The first screens are kept as screenshots in tmp_path."""
    pages = sorted(pipeline["reports"].glob("*.html"))
    assert {"index.html", "evaluation.html", "training.html", "bias.html"} <= {path.name for path in pages}
    overflowing, counts, first_screen = {}, {}, {}
    for path in pages:
        for label, size in browser.LAYOUT_SCREENS.items():
            probe = "at-a-glance-table" if path.name == "evaluation.html" else None
            layout = browser.measure_layout(path, size, tmp_path / "profile", probe)
            assert layout["width"] == size[0], layout
            counts[f"{path.name} at {label}"] = len(layout["overflowing"])
            if layout["overflowing"]:
                overflowing[f"{path.name} at {label}"] = layout["overflowing"][:5]
            if probe:
                first_screen[label] = layout["firstScreenTop"], layout["height"]
            shot = tmp_path / f"{path.stem}-{label}.png"
            browser.first_screen_shot(path, size, shot, tmp_path / "profile")
            with Image.open(shot) as image:
                assert image.size == size
    assert not overflowing, (counts, overflowing)
    assert all(top is not None and 0 <= top < height for top, height in first_screen.values()), first_screen
    assert not list(pipeline["reports"].glob(".*.html"))  # the probes are gone


@pytest.mark.slow
def test_gallery_and_worst_cases(pipeline: dict[str, Path]) -> None:
    html = page(pipeline, "evaluation.html")
    images = browser.collect(html).images
    gallery = [src for src in images if src.startswith("evaluation/gallery-")]
    assert len(gallery) == len(PRESETS) * 3 * 4  # 3 faces x (LQ, bicubic, gfpgan, GT)
    assert html.count('<div class="compare">') == len(PRESETS) * 3
    assert html.count('type="radio"') == len(gallery) and "<script" not in html.lower()
    rows = list(csv.DictReader(open(pipeline["data"] / "evaluation" / "per_image.csv", newline="")))
    for restorer in ("lq", "bicubic", "gfpgan"):
        mine = sorted((r for r in rows if r["restorer"] == restorer), key=lambda r: -float(r["identity_distance"]))
        section = html.split(f"<h3>{restorer}</h3>", 1)[1].split("</table>", 1)[0]
        shown = re.findall(r"<td class=\"num\">(\d+\.\d{4})</td>", section)
        assert shown == [f"{float(r['identity_distance']):.4f}" for r in mine[:page_assets.WORST_PER_RESTORER]]
    total = sum(path.stat().st_size for path in (pipeline["reports"] / "evaluation").iterdir())
    assert total < 1_000_000  # small JPEGs, not copies of the PNGs


@pytest.mark.slow
def test_the_evaluation_page_reads_no_tar(pipeline: dict[str, Path], tmp_path: Path) -> None:
    """The gallery and worst cases come from the evaluate stage's output: with every tar of the pairs and restore
    stages gone (their index.json kept), the page shows the same images, byte for byte."""
    data = tmp_path / "data"
    shutil.copytree(pipeline["data"] / "evaluation", data / "evaluation")
    for stage in ("pairs", "restored"):
        (data / stage).mkdir()
        shutil.copy(pipeline["data"] / stage / "index.json", data / stage / "index.json")
    params = make_params(pipeline["root"], pipeline["models"] / "gfpgan" / gfpgan.MODEL_FILE)
    report_stage.run(params, data, tmp_path / "r", models_dir=pipeline["models"])
    html = (tmp_path / "r" / "evaluation.html").read_text(encoding="utf-8")
    before = browser.collect(page(pipeline, "evaluation.html")).images
    assert [src for src in browser.collect(html).images if src.startswith("evaluation/")] == \
        [src for src in before if src.startswith("evaluation/")]
    assert "image missing" not in html
    for path in (pipeline["reports"] / "evaluation").iterdir():
        assert (tmp_path / "r" / "evaluation" / path.name).read_bytes() == path.read_bytes()


@pytest.mark.slow
def test_gfpgan_not_run_keeps_the_baselines(pipeline: dict[str, Path], tmp_path: Path) -> None:
    absent = tmp_path / SCRIPT / "gfpgan.pth"
    params = make_params(tmp_path, absent)
    data = tmp_path / "data"
    data.mkdir()
    (data / "pairs").symlink_to(pipeline["data"] / "pairs", target_is_directory=True)
    restore_stage.run(params, data / "pairs", data / "restored")
    evaluate_stage.run(params, data / "pairs", data / "restored", data / "evaluation", tmp_path / "r" / "metrics.json")
    report_stage.run(params, data, tmp_path / "r", models_dir=tmp_path / "models")
    html = (tmp_path / "r" / "evaluation.html").read_text(encoding="utf-8")
    assert "Restorer <code>gfpgan</code> was not run" in html
    reason = json.loads((data / "restored" / "index.json").read_text())["restorers"]["gfpgan"]["reason"]
    assert SCRIPT in reason and SCRIPT not in html
    assert reason.replace("<", "&lt;").replace(">", "&gt;").replace("'", "&#39;") in html
    assert "not computed: restorer gfpgan not run" in html  # the headline
    summary = json.loads((data / "evaluation" / "summary.json").read_text())
    bicubic = summary["results"]["paper"]["bicubic"]["psnr"]
    assert f"{bicubic:.4f}" in cell_texts(html)
    gallery = [src for src in browser.collect(html).images if src.startswith("evaluation/gallery-")]
    assert len(gallery) == len(PRESETS) * 3 * 3  # LQ, bicubic, GT


@pytest.mark.slow
def test_hostile_names_are_escaped_on_every_page(pipeline: dict[str, Path]) -> None:
    for name in PAGES:
        html = page(pipeline, name)
        assert SCRIPT not in html and "<img src=x" not in html, name
        assert "<script" not in html.lower(), name
        assert SCRIPT_ESCAPED in html, name  # the data folder / path text, shown as text
    assert HOSTILE_ID_ESCAPED in page(pipeline, "evaluation.html")


@pytest.mark.slow
def test_pages_link_locally_and_index_links_them(pipeline: dict[str, Path]) -> None:
    for name in PAGES:
        browser.assert_links_local(pipeline["reports"] / name)
    index = page(pipeline, "index.html")
    for stage, target in (("train_prior", "training"), ("train", "training"), ("restore", "evaluation"),
                          ("evaluate", "evaluation")):
        assert f'href="{target}.html#{stage}"' in index
        assert f'id="{stage}"' in page(pipeline, f"{target}.html")
        row = re.search(rf"<td>{stage}</td>.*?</tr>", index, re.S)
        assert row is not None and "<td>ran</td>" in row.group(0), stage  # the receipt in its output folder


@pytest.mark.slow
def test_model_card_numbers_are_those_of_the_stage_outputs(pipeline: dict[str, Path]) -> None:
    card = (pipeline["reports"] / "MODEL_CARD.md").read_text(encoding="utf-8")
    html = page(pipeline, "model.html")
    metrics = json.loads((pipeline["reports"] / "metrics.json").read_text())
    receipt = json.loads((pipeline["models"] / "gfpgan" / "receipt.json").read_text())
    accuracy = metrics["accuracy"]
    for text in (card, html):
        assert f"{accuracy['value']:.3f} [{accuracy['ci_low']:.3f}, {accuracy['ci_high']:.3f}]" in text
        assert f"Steps: {receipt['counts']['steps']};" in text
        for preset in PRESETS:
            for restorer in ("lq", "bicubic", "gfpgan"):
                entry = metrics[preset][restorer]
                assert (f"{entry['rank1_accuracy']:.3f} [{entry['rank1_accuracy_ci_low']:.3f}, "
                        f"{entry['rank1_accuracy_ci_high']:.3f}]") in text
                assert f"{entry['psnr']:.3f}" in text and f"{entry['ssim']:.3f}" in text
        assert "not computed: bias findings (bias.json)" in text  # the bias stage is not run here
    assert accuracy["identity_metric_circularity"] in card
    # the train stage's first card, beside the weights: no evaluation yet, it points to the report
    first = (pipeline["models"] / "gfpgan" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert f"Steps: {receipt['counts']['steps']};" in first and "not yet run at training time" in first


@pytest.mark.slow
def test_rebuild_is_byte_identical(pipeline: dict[str, Path]) -> None:
    reports = pipeline["reports"]
    before = {path.relative_to(reports): path.read_bytes() for path in reports.rglob("*") if path.is_file()}
    params = make_params(pipeline["root"], pipeline["models"] / "gfpgan" / gfpgan.MODEL_FILE)
    report_stage.run(params, pipeline["data"], reports, models_dir=pipeline["models"])
    after = {path.relative_to(reports): path.read_bytes() for path in reports.rglob("*") if path.is_file()}
    assert after == before
    assert not list(reports.rglob(".*.tmp")) and not list(reports.glob("*.partial"))


@pytest.mark.slow
@prereq.needs(browser.chromium() is not None,
              "chromium not installed (make setup installs it: apt-get install -y chromium)")
@pytest.mark.slow
def test_pages_render_in_headless_chromium(pipeline: dict[str, Path], tmp_path: Path) -> None:
    for name in ("training.html", "evaluation.html"):
        errors = browser.load_in_chromium(pipeline["reports"] / name, tmp_path / f"{Path(name).stem}.png",
                                          tmp_path / "profile")
        assert not errors, f"{name}: {errors}"
    assert (tmp_path / "training.png").is_file() and (tmp_path / "evaluation.png").is_file()


def test_grid_captions_add_the_noise_off_figures_when_measured() -> None:
    row = {"n_samples": 8.0, "detection_rate": 0.125, "ci_low": 0.02, "ci_high": 0.47, "fd_dlib": 0.41}
    assert "noise inputs off" not in training_page.grid_note(row)  # a run from before the noise-off columns
    note = training_page.grid_note({**row, "detection_rate_noise_off": 0.5, "fd_dlib_noise_off": 0.29})
    assert note.startswith("on 8 measured samples (not only these): faces detected 1/8 (0.125, 95% CI 0.02-0.47)")
    assert note.endswith("FD 0.41; noise inputs off: 4/8, FD 0.29")
    assert "noise inputs off" not in training_page.grid_note({**row, "detection_rate_noise_off": float("nan"),
                                                              "fd_dlib_noise_off": float("nan")})
