"""The model card (dlfp.report.model_card): every number comes from the stage outputs, and HTML escapes them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from markupsafe import escape

from dlfp.layout import CARD_NAME
from dlfp.params import parse_params
from dlfp.report.model_card import CardSources, write_card
from dlfp.stages import report as report_stage

SCRIPT = "<script>alert(1)</script>"
SCRIPT_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
PIPE_LICENCE = "CC BY|NC"  # a "|" must not split the Markdown table cell
CIRCULAR = "yes: trained with dlib's face network, the network that scores identity here"


def make_params():
    return parse_params({"data": {"folder": "faces", "size": 256}})


def write_json(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload), encoding="utf-8")


def gfpgan_entry(rank1: float, low: float, high: float, psnr: float, circularity: str) -> dict:
    return {"count": 40, "psnr": psnr, "ssim": 0.61234, "rank1_accuracy": rank1, "rank1_accuracy_ci_low": low,
            "rank1_accuracy_ci_high": high, "identity_match_rate": 0.7, "identity_match_rate_ci_low": 0.55,
            "identity_match_rate_ci_high": 0.82, "identity_metric_circularity": circularity,
            "lpips": "not computed: weights missing"}


def metrics_json(rank1: float = 0.44219, psnr: float = 22.81442) -> dict:
    return {
        "accuracy": {"value": rank1, "ci_low": 0.39078, "ci_high": 0.49488, "n": 40, "preset": "moderate",
                     "restorer": "gfpgan", "target": 0.5, "meets_target": False, "definition": "rank-1 " + SCRIPT,
                     "identity_metric_circularity": CIRCULAR,
                     "calibration": {"threshold": 0.6, "far_at_threshold": 0.02487,
                                     "far_at_threshold_ci_low": 0.01727, "far_at_threshold_ci_high": 0.03769}},
        "calibration": {}, "colour_space": {"psnr": "RGB", "ssim": "Y of YIQ"},
        "moderate": {"gfpgan": gfpgan_entry(rank1, 0.39078, 0.49488, psnr, CIRCULAR),
                     "bicubic": gfpgan_entry(0.39017, 0.34, 0.44339, 21.96123, "no: not a trained model")},
    }


def tone(median: float, low: float, high: float, flagged: bool, verdict: str) -> dict:
    return {"ci": [low, high], "flagged": flagged, "median_d_ita": median, "n": 60, "share_lightened": 0.76667,
            "sign_p_holm": 0.00021, "verdict": verdict}


def bias_json(dark_median: float = 1.56012, dark_verdict: str = "lightened", psnr_p_holm: float = 0.03748) -> dict:
    return {"correction": "both", "composition_skin_tone": {"train": {"very light": 301, "dark": 5}},
            "results": {"moderate": {"gfpgan": {
        "tone_shift_by_skin_tone": {
            "tan+brown+dark": tone(dark_median, 0.49611, 2.47712, True, dark_verdict),
            "very light": tone(-0.14213, -0.50412, 0.37313, False, "no shift (equivalent)"),
            SCRIPT: tone(0.1, -0.2, 0.3, False, SCRIPT)},
        "largest_gap": {
            "psnr": {"best": "tan+brown+dark", "worst": "light", "grouping": "skin_tone", "gap": -0.88341,
                     "gap_low": -1.39133, "gap_high": -0.22062, "ratio": 0.96195, "ratio_low": 0.94066,
                     "ratio_high": 0.99049, "p": 0.01249, "p_holm": psnr_p_holm, "family_size": 5},
            "lpips": {"status": "not computed: LPIPS weights missing"}},
    }}}}


def write_per_image(path: Path, gfpgan_psnr: list[float]) -> None:
    """Per-face PSNR/SSIM of the evaluate stage; a blank (not computed) value is skipped."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [["moderate", "gfpgan", f"f{n}", psnr, ssim] for n, (psnr, ssim) in
            enumerate(zip(gfpgan_psnr, [0.6, 0.61234, 0.62468], strict=True))]
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["preset", "restorer", "id", "psnr", "ssim"], *rows,
                                      ["moderate", "gfpgan", "f9", "", "nan"]])


def make_outputs(root: Path) -> tuple[Path, Path, Path]:
    """Fake outputs of train (models/gfpgan), acquire (manifest.csv), evaluate and bias (reports/*.json)."""
    models, data, reports = root / "models", root / "data", root / "reports"
    gfpgan = models / "gfpgan"
    config = {"out_size": 64, "num_style_feat": 128}
    write_json(gfpgan / "receipt.json", {"stage": "train", "seed": 20260101, "params_hash": "7368b0027f0b75df",
                                         "counts": {"steps": 1317, "train_samples": 688}, "config": config,
                                         "validation_pairs": {"split": "val", "preset": "moderate",
                                                              "ids": ["a", "b", "c"]},
                                         "versions": {"dlfp": "0.1.0", "torch": "2.14.1"}})
    write_json(gfpgan / "gfpgan.json", {"arch": "GFPGANv1Clean", "config": config, "weights_key": "params_ema",
                                        "input": "RGB face", "prior": "models/prior/prior.pth",
                                        "value_range": [-1, 1]})
    write_json(gfpgan / "losses_active.json", {
        "batch_size": 8, "bf16": False, "device": "cpu", "world_size": 1, "lr": 0.00123, "ema_decay": 0.99723,
        "grad_clip_norm": 1.0, "fix_decoder": False, "preset": "moderate",
        "terms": {"identity": {"network": "dlib", "source": "dlib_face_recognition_resnet_model_v1", "weight": 1.0},
                  "pixel": {"definition": "L1(output, GT)", "weight": 1.0}}})
    manifest = data / "raw" / "manifest.csv"
    manifest.parent.mkdir(parents=True)
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["id", "source", "licence"], ["a", "a.png", SCRIPT], ["b", "b.png", ""],
                                      ["c", "c.png", PIPE_LICENCE], ["d", "d.png", PIPE_LICENCE]])
    write_per_image(data / "evaluation" / "per_image.csv", [20.81442, 22.81442, 24.81442])
    write_json(reports / "metrics.json", metrics_json())
    write_json(reports / "bias.json", bias_json())
    return models, data, reports


def build_card(models: Path, data: Path, reports: Path) -> tuple[str, str]:
    report_stage.run(make_params(), data_dir=data, out_dir=reports, models_dir=models)
    return (reports / CARD_NAME).read_text(encoding="utf-8"), (reports / "model.html").read_text(encoding="utf-8")


def test_card_numbers_are_read_from_metrics_and_bias_json(tmp_path: Path) -> None:
    models, data, reports = make_outputs(tmp_path)
    card, html = build_card(models, data, reports)
    for text in (card, html):
        assert "0.442 [0.391, 0.495]" in text  # rank-1 with its Wilson CI
        # PSNR, SSIM: the means of metrics.json, 95% t-intervals over the faces of per_image.csv
        assert "22.814 [17.846, 27.783]" in text and "0.612 [0.582, 0.643]" in text
        assert "21.961 (no interval recorded)" in text  # bicubic has no rows in per_image.csv
        assert "1317" in text and "0.001230" in text  # steps (receipt), learning rate (losses_active)
        assert "lightened: tan+brown+dark (median ΔITA 1.560)" in text
        assert "-0.883 [-1.391, -0.221]" in text and "0.0375" in text  # largest PSNR gap, its CI and Holm p
        assert "0.025 [0.017, 0.038]" in text  # false-accept rate at the threshold, in the limitations
        assert "Faces per skin tone in the train split: very light 301, dark 5" in text
        assert CIRCULAR in text if text is card else str(escape(CIRCULAR)) in text
        assert "outputs 64 px faces while the aligned data are 256 px" in text
    assert "Model card" in (reports / "index.html").read_text(encoding="utf-8")

    write_json(reports / "metrics.json", metrics_json(rank1=0.71828, psnr=31.41593))
    write_per_image(data / "evaluation" / "per_image.csv", [30.41593, 31.41593, 32.41593])
    write_json(reports / "bias.json", bias_json(dark_median=-2.71828, dark_verdict="darkened", psnr_p_holm=0.61803))
    card, html = build_card(models, data, reports)
    for text in (card, html):
        assert "0.442" not in text and "22.814" not in text and "1.560" not in text
        assert "0.718 [0.391, 0.495]" in text and "31.416 [28.932, 33.900]" in text
        assert "lightened: no group; darkened: tan+brown+dark (median ΔITA -2.718)" in text
        assert "0.6180" in text and "0.0375" not in text


def test_hostile_strings_are_escaped_in_the_page_and_kept_as_text_in_markdown(tmp_path: Path) -> None:
    card, html = build_card(*make_outputs(tmp_path))
    assert SCRIPT not in html and "<script" not in html.lower()
    assert html.count(SCRIPT_ESCAPED) >= 3  # licence, skin-tone group, verdict, definition
    assert SCRIPT in card  # Markdown shows it as text
    assert "| CC BY\\|NC | 2 |" in card  # the pipe is escaped, the count is the manifest's
    assert "| not recorded | 1 |" in card


def test_missing_outputs_are_named_not_fatal(tmp_path: Path) -> None:
    models, data, reports = make_outputs(tmp_path)
    (data / "evaluation" / "per_image.csv").unlink()
    card, _ = build_card(models, data, reports)
    assert f"not computed: PSNR/SSIM intervals — {data / 'evaluation' / 'per_image.csv'} does not exist" in card
    assert "22.814 (no interval recorded)" in card
    (reports / "metrics.json").unlink()
    (reports / "bias.json").write_text("{broken", encoding="utf-8")
    card, html = build_card(models, data, reports)
    assert f"not computed: evaluation (metrics.json) — {reports / 'metrics.json'} does not exist" in card
    assert "not computed: bias findings (bias.json)" in card and "is unreadable" in card
    assert "class=\"missing\">not computed: evaluation" in html
    assert "Out of scope: identifying people" in card  # the sections that need no stage output are still there


def test_training_time_card_points_to_the_report_for_evaluation(tmp_path: Path) -> None:
    models, _, _ = make_outputs(tmp_path)
    write_card(models / "gfpgan" / CARD_NAME, CardSources(model_dir=models / "gfpgan", data_size=128))
    card = (models / "gfpgan" / CARD_NAME).read_text(encoding="utf-8")
    assert "Steps: 1317" in card and "GFPGANv1Clean" in card
    assert "not computed: evaluation — not yet run at training time: see reports/MODEL_CARD.md" in card
    assert "not computed: bias — not yet run at training time" in card
    assert "0.442" not in card
