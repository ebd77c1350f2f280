"""The model card of the trained GFP-GAN (Mitchell et al. 2019; the Hugging Face model card sections).

Where it is written, and why there: a card's evaluation and bias sections need the evaluate and bias stages,
which run after train. So there is one gatherer, `gather_card`, that reads whichever stage outputs exist and
says "not computed: <reason>" for the rest, and one pair of templates (model_card.md, model.html) that render
its sections as Markdown or as an HTML page; no wording or number lives in the templates.
- The train stage writes a first card beside the weights (models/gfpgan/MODEL_CARD.md): details, data, recipe,
  intended use, limitations and ethics, with evaluation and bias "not yet run" (they point to the report).
- The report stage writes the complete card, reports/MODEL_CARD.md and reports/model.html, from models/gfpgan,
  data/raw/manifest.csv, reports/metrics.json and reports/bias.json. The weights folder is not rewritten by the
  report (it is the train stage's DVC output).
Every number is read from those files; the card types none in. This module is a library: it imports no stage.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np
from scipy import stats

from dlfp.html import TEMPLATES_DIR
from dlfp.io.atomic import write_text_atomic
from dlfp.report.readers import Table, mapping, read_json_object

MD_TEMPLATE = "model_card.md"
RESTORER = "gfpgan"  # the trained model's name in metrics.json and bias.json
NOT_YET = "not yet run at training time: see reports/MODEL_CARD.md (written by the report stage)"
# metrics.json top-level keys that are not presets
NON_PRESET_KEYS = ("split", "accuracy", "calibration", "colour_space")
INTERVAL_METRICS = ("psnr", "ssim")  # their intervals come from the per-face values (metrics.json holds means)


@dataclass
class Section:
    title: str
    anchor: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # "not computed: <reason>" lines


@dataclass
class CardSources:
    """Where the facts come from; None = this writer has no such input (e.g. the train stage has no reports)."""

    model_dir: Path
    manifest: Path | None = None
    metrics: Path | None = None
    bias: Path | None = None
    data_size: int | None = None  # params data.size: the aligned faces' side in px
    per_image: Path | None = None  # data/evaluation/per_image.csv: the per-face values behind PSNR/SSIM intervals


def fmt(value: object, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/c" if value is None else str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "n/c"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def _presets_text(value: object) -> str:
    """One preset name, or a mixture ("mixture of mild, moderate (one drawn per sample)")."""
    if isinstance(value, list):
        return f"mixture of {', '.join(map(str, value))} (one drawn per sample and epoch)"
    return fmt(value)


def fmt_ci(value: object, low: object, high: object, digits: int = 3) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return fmt(value, digits)
    if low is None or high is None:
        return f"{fmt(value, digits)} (no interval recorded)"
    return f"{fmt(value, digits)} [{fmt(low, digits)}, {fmt(high, digits)}]"


def licence_counts(manifest: Path, errors: list[str]) -> list[tuple[str, int]] | None:
    """How many kept images carry each licence in the manifest's `licence` column (blank = not recorded)."""
    try:
        with manifest.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if "licence" not in (reader.fieldnames or []):
                errors.append(f"not computed: licence counts — {manifest} has no licence column")
                return None
            counts = Counter((row.get("licence") or "").strip() or "not recorded" for row in reader)
    except FileNotFoundError:
        errors.append(f"not computed: licence counts — {manifest} does not exist (acquire has not run)")
        return None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        errors.append(f"not computed: licence counts — {manifest} is unreadable ({error})")
        return None
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _details(receipt: Mapping, arch: Mapping, model_dir: Path, missing: list[str]) -> Section:
    config = mapping(arch.get("config")) or mapping(receipt.get("config"))
    versions = mapping(receipt.get("versions"))
    section = Section("Model details", "details", missing=missing)
    section.bullets = [
        f"Architecture: {fmt(arch.get('arch'))}, output side {fmt(config.get('out_size'))} px "
        f"(constructor arguments: {json.dumps(dict(config), sort_keys=True, default=str)})",
        f"Weights: {model_dir / 'gfpgan.pth'} (key {fmt(arch.get('weights_key'))}); "
        f"input: {fmt(arch.get('input'))}; value range {fmt(arch.get('value_range'))}",
        f"Generative prior: {fmt(arch.get('prior'))}",
        f"Trained by dl-fp {fmt(versions.get('dlfp'))} with torch {fmt(versions.get('torch'))}; "
        f"seed {fmt(receipt.get('seed'))}; parameter hash {fmt(receipt.get('params_hash'))}",
        "Reference: Wang et al., Towards Real-World Blind Face Restoration with Generative Facial Prior "
        "(CVPR 2021); this is a re-implementation, not the published weights.",
    ]
    return section


def intended_use_section() -> Section:
    return Section("Intended use", "use", paragraphs=[
        "Research on blind face restoration: restoring degraded, aligned face photographs for study of the "
        "method, its failure modes and its biases, on data whose licence allows it.",
    ], bullets=[
        "Out of scope: identifying people (face recognition, matching a restored face against a database); the "
        "restorer invents detail, so a restored face is not evidence of who is shown.",
        "Out of scope: surveillance, including enhancing CCTV or crowd imagery of people who did not consent.",
        "Out of scope: passing restored faces off as original photographs (news, archives, legal or historical "
        "records); a restored image must be labelled as restored.",
        "Out of scope: commercial use (the training data's licence is non-commercial).",
    ])


def _training_data(receipt: Mapping, sources: CardSources, errors: list[str]) -> Section:
    section = Section("Training data", "data", paragraphs=[
        "FFHQ (Karras et al. 2019): the dataset is released under CC BY-NC-SA 4.0 by NVIDIA; every image keeps "
        "its own Flickr licence (CC BY, CC BY-NC, public domain, ...), which the acquire stage records per image "
        "in data/raw/manifest.csv (column `licence`). Any other images in the shared set are listed there too.",
    ])
    counts = mapping(receipt.get("counts"))
    validation = mapping(receipt.get("validation_pairs"))
    section.bullets.append(f"Training samples seen by the train stage: {fmt(counts.get('train_samples'))}; "
                           f"validation pairs: {fmt(len(validation.get('ids') or []))} "
                           f"({fmt(validation.get('split'))} split, preset {fmt(validation.get('preset'))})")
    if sources.manifest is None:
        section.missing.append("not computed: licence counts — read by the report stage from data/raw/manifest.csv")
        return section
    licences = licence_counts(sources.manifest, section.missing)
    if licences is not None:
        section.tables.append(Table(["licence (manifest.csv)", "images"], [[name, fmt(n)] for name, n in licences],
                                    caption=f"from {sources.manifest}"))
    return section


def _recipe(receipt: Mapping, losses: Mapping | None, missing: list[str]) -> Section:
    counts = mapping(receipt.get("counts"))
    section = Section("Training recipe and compute", "train", missing=missing)
    if losses is None:
        return section
    section.bullets = [
        f"Steps: {fmt(counts.get('steps'))}; batch size per process {fmt(losses.get('batch_size'))}; "
        f"processes {fmt(losses.get('world_size'))}; device {fmt(losses.get('device'))}; "
        f"bf16 {fmt(losses.get('bf16'))}",
        f"Learning rate {fmt(losses.get('lr'), 6)}; EMA decay {fmt(losses.get('ema_decay'), 6)}; "
        f"gradient clip norm {fmt(losses.get('grad_clip_norm'))}; decoder fixed: {fmt(losses.get('fix_decoder'))}",
        f"Degradation preset for training: {_presets_text(losses.get('preset'))}; decoder initialised from "
        f"{fmt(losses.get('decoder_init', 'prior'))}",
        "Wall time: not recorded by the train stage's receipt.",
    ]
    rows = []
    for term, entry in sorted(mapping(losses.get("terms")).items()):
        entry = mapping(entry)
        detail = "; ".join(f"{key}: {fmt(entry[key])}" for key in ("network", "source", "definition", "note")
                           if entry.get(key) is not None)
        rows.append([term, fmt(entry.get("weight"), 4), detail])
    section.tables.append(Table(["loss term", "weight (0 = off)", "network / definition"], rows,
                                caption="from losses_active.json: the terms really used"))
    return section


def mean_intervals(per_image: Path, errors: list[str]) -> dict[tuple[str, str, str], tuple[float, float]]:
    """95% t-interval of the mean PSNR and SSIM per (preset, restorer, metric) over the faces of per_image.csv."""
    values: dict[tuple[str, str, str], list[float]] = {}
    try:
        with per_image.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                for metric in INTERVAL_METRICS:
                    try:
                        value = float(row.get(metric) or "nan")
                    except ValueError:
                        continue
                    if math.isfinite(value):
                        values.setdefault((row.get("preset", ""), row.get("restorer", ""), metric), []).append(value)
    except FileNotFoundError:
        errors.append(f"not computed: PSNR/SSIM intervals — {per_image} does not exist (evaluate has not run)")
        return {}
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        errors.append(f"not computed: PSNR/SSIM intervals — {per_image} is unreadable ({error})")
        return {}
    return {key: t_interval(np.asarray(sample)) for key, sample in values.items() if len(sample) > 1}


def t_interval(sample: np.ndarray) -> tuple[float, float]:
    """95% t-interval of the mean of `sample` (at least two values)."""
    low, high = stats.t.interval(0.95, len(sample) - 1, loc=sample.mean(), scale=stats.sem(sample))
    return float(low), float(high)


def _presets(metrics: Mapping) -> list[str]:
    return [key for key, value in metrics.items() if key not in NON_PRESET_KEYS and isinstance(value, Mapping)]


def _evaluation(metrics: Mapping | None, per_image: Path | None, missing: list[str]) -> Section:
    section = Section("Evaluation results", "evaluate", missing=missing)
    if metrics is None:
        return section
    intervals = mean_intervals(per_image, section.missing) if per_image is not None else {}

    def mean_ci(preset: str, restorer: str, entry: Mapping, metric: str) -> str:
        low, high = intervals.get((preset, restorer, metric), (None, None))
        return fmt_ci(entry.get(metric), low, high)
    headline = mapping(metrics.get("accuracy"))
    if headline:
        value = fmt_ci(headline.get("value"), headline.get("ci_low"), headline.get("ci_high"))
        section.paragraphs.append(
            f"Headline: rank-1 identification accuracy {value} "
            f"(n = {fmt(headline.get('n'))}, preset {fmt(headline.get('preset'))}, restorer "
            f"{fmt(headline.get('restorer'))}); target {fmt(headline.get('target'))}, met: "
            f"{fmt(headline.get('meets_target'))}. Definition: {fmt(headline.get('definition'))}")
    colour = mapping(metrics.get("colour_space"))
    for preset in _presets(metrics):
        rows = []
        for restorer, entry in mapping(metrics[preset]).items():
            entry = mapping(entry)
            rows.append([restorer, fmt(entry.get("count")), mean_ci(preset, restorer, entry, "psnr"),
                         mean_ci(preset, restorer, entry, "ssim"),
                         fmt_ci(entry.get("rank1_accuracy"), entry.get("rank1_accuracy_ci_low"),
                                entry.get("rank1_accuracy_ci_high")),
                         fmt_ci(entry.get("identity_match_rate"), entry.get("identity_match_rate_ci_low"),
                                entry.get("identity_match_rate_ci_high")),
                         fmt(entry.get("identity_metric_circularity"))])
        section.tables.append(Table(
            ["restorer", "faces", f"PSNR dB ({fmt(colour.get('psnr'))}) [95% CI]",
             f"SSIM ({fmt(colour.get('ssim'))}) [95% CI]",
             "rank-1 accuracy [95% Wilson CI]", "identity match rate [95% CI]", "identity metric circular?"],
            rows, caption=f"preset {preset}: test faces; PSNR and SSIM are the means of metrics.json, their "
                          "intervals 95% t-intervals of the mean over the faces of per_image.csv"))
    return section


def _bias(bias: Mapping | None, missing: list[str]) -> Section:
    section = Section("Bias findings", "bias", missing=missing)
    if bias is None:
        return section
    section.paragraphs.append(
        "Skin tone is measured as ITA on the ground-truth face; a positive ΔITA means the restorer made the face "
        "lighter. A group is flagged when its shift is significant (sign test, Holm-corrected); its verdict says "
        "lightened or darkened only when the shift is also outside the equivalence margin. Illumination "
        f"correction of the ITA measurement: {fmt(bias.get('correction'))}.")
    for split, counts in mapping(bias.get("composition_skin_tone")).items():
        counts = mapping(counts)
        section.bullets.append(f"Faces per skin tone in the {split} split: "
                               + ", ".join(f"{group} {fmt(n)}" for group, n in counts.items()))
    for preset, per_restorer in mapping(bias.get("results")).items():
        result = mapping(mapping(per_restorer).get(RESTORER))
        if not result:
            section.missing.append(f"not computed: bias of {RESTORER} on preset {preset} — no entry in bias.json")
            continue
        tone = mapping(result.get("tone_shift_by_skin_tone"))
        rows, lightened, darkened, negligible = [], [], [], []
        for group, entry in tone.items():
            entry = mapping(entry)
            ci = entry.get("ci") if isinstance(entry.get("ci"), Sequence) else (None, None)
            rows.append([group, fmt(entry.get("n")), fmt_ci(entry.get("median_d_ita"), *ci[:2]),
                         fmt(entry.get("share_lightened")), fmt(entry.get("sign_p_holm"), 4),
                         fmt(entry.get("flagged")), fmt(entry.get("verdict"))])
            if entry.get("flagged") is True:
                verdict = entry.get("verdict")
                (lightened if verdict == "lightened" else darkened if verdict == "darkened" else negligible
                 ).append(f"{group} (median ΔITA {fmt(entry.get('median_d_ita'))})")
        section.bullets.append(
            f"Preset {preset}: lightened: {', '.join(lightened) or 'no group'}; darkened: "
            f"{', '.join(darkened) or 'no group'}; significant but within the equivalence margin: "
            f"{', '.join(negligible) or 'no group'}")
        section.tables.append(Table(
            ["skin tone", "faces", "median ΔITA [95% CI]", "share lightened", "sign test p (Holm)", "flagged",
             "verdict"], rows, caption=f"preset {preset}: skin-tone shift of {RESTORER}"))
        gap_rows = []
        for metric, gap in mapping(result.get("largest_gap")).items():
            gap = mapping(gap)
            if "status" in gap:
                gap_rows.append([metric, "n/c", "n/c", "n/c", "n/c", "n/c"])
                status = f"{metric}: {fmt(gap['status'])}"
                if status not in section.missing:
                    section.missing.append(status)
                continue
            gap_rows.append([metric, f"{fmt(gap.get('grouping'))}: {fmt(gap.get('worst'))} vs {fmt(gap.get('best'))}",
                             fmt_ci(gap.get("gap"), gap.get("gap_low"), gap.get("gap_high")),
                             fmt_ci(gap.get("ratio"), gap.get("ratio_low"), gap.get("ratio_high")),
                             fmt(gap.get("p_holm"), 4), fmt(gap.get("family_size"))])
        section.tables.append(Table(
            ["metric", "groups (worst vs best)", "gap [95% CI]", "ratio [95% CI]", "p (Holm)", "tests in family"],
            gap_rows, caption=f"preset {preset}: largest gap between groups per metric for {RESTORER}"))
    return section


def _limitations(arch: Mapping, losses: Mapping | None, metrics: Mapping | None, sources: CardSources) -> Section:
    config = mapping(arch.get("config"))
    section = Section("Limitations", "limitations")
    section.bullets.append(
        f"Resolution: the model outputs {fmt(config.get('out_size'))} px faces while the aligned data are "
        f"{fmt(sources.data_size)} px (params data.size) and the published GFP-GAN works at 512 px; fine detail "
        "(skin texture, hair, eyes) cannot be judged at this size and the results do not transfer to the paper's "
        "scale.")
    calibration = mapping(mapping(metrics).get("accuracy")).get("calibration") if metrics else None
    calibration = mapping(calibration)
    far = fmt_ci(calibration.get("far_at_threshold"), calibration.get("far_at_threshold_ci_low"),
                 calibration.get("far_at_threshold_ci_high"))
    threshold_text = (f" At the match threshold {fmt(calibration.get('threshold'))} the false-accept rate between "
                      f"different people of the test set is {far}." if calibration else "")
    section.bullets.append(
        "Identity metric: dlib's 128-D face descriptor says whether the restored face still matches its own "
        "ground truth better than the other test faces; it cannot say that a face looks like the person to a human, "
        "nor that invented details are correct, and dlib itself is less accurate on some groups." + threshold_text)
    identity = mapping(mapping(mapping(losses).get("terms")).get("identity")) if losses else {}
    verdict = mapping(mapping(metrics).get("accuracy")).get("identity_metric_circularity") if metrics else None
    section.bullets.append(
        f"Circularity: identity loss weight {fmt(identity.get('weight'))} with network "
        f"{fmt(identity.get('network'))}; when the model is trained with dlib's face network, the network that "
        "scores identity, its identity figures are optimistic, not independent evidence. Verdict in metrics.json: "
        f"{fmt(verdict) if verdict else 'not computed: metrics.json not read'}.")
    section.bullets.append("Test set: the project's test split, not CelebA-Test; figures are not comparable with the "
                           "paper's.")
    return section


def ethics_section() -> Section:
    return Section("Ethical considerations", "ethics", bullets=[
        "Deepfakes: a restorer invents plausible detail; restored faces can be used to fabricate or 'authenticate' "
        "images of real people. Label outputs as restored and keep the originals.",
        "Skin-tone lightening: face restorers trained on skewed data have been seen to lighten darker faces; this "
        "project was founded to measure that. The bias section above reports the measured shift per skin-tone "
        "group, and how many faces of each skin tone the splits hold.",
        "Consent: the people in FFHQ did not consent to face-restoration research specifically; respect the "
        "per-image licences and do not redistribute restored faces beyond them.",
    ])


def gather_card(sources: CardSources) -> list[Section]:
    """Every section of the card from the outputs that exist; missing parts say what is not computed and why."""
    model_missing: list[str] = []
    receipt = read_json_object(sources.model_dir / "receipt.json", model_missing, "training receipt") or {}
    arch = read_json_object(sources.model_dir / "gfpgan.json", model_missing, "model configuration") or {}
    recipe_missing: list[str] = []
    losses = read_json_object(sources.model_dir / "losses_active.json", recipe_missing, "training recipe")
    eval_missing: list[str] = [] if sources.metrics is not None else [f"not computed: evaluation — {NOT_YET}"]
    metrics = read_json_object(sources.metrics, eval_missing, "evaluation (metrics.json)")
    bias_missing: list[str] = [] if sources.bias is not None else [f"not computed: bias — {NOT_YET}"]
    bias = read_json_object(sources.bias, bias_missing, "bias findings (bias.json)")
    return [_details(receipt, arch, sources.model_dir, model_missing), intended_use_section(),
            _training_data(receipt, sources, []), _recipe(receipt, losses, recipe_missing),
            _evaluation(metrics, sources.per_image, eval_missing), _bias(bias, bias_missing),
            _limitations(arch, losses, metrics, sources), ethics_section()]


def _md_cell(text: str) -> str:
    """A Markdown table cell: pipes and line breaks would end the cell or the row."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_env() -> jinja2.Environment:
    """Markdown is not HTML: no autoescaping (model.html, through the report's env, escapes everything)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=False,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["md_cell"] = _md_cell
    return env


def render_markdown(sections: list[Section], title: str = "Model card: GFP-GAN (dl-fp)") -> str:
    return markdown_env().get_template(MD_TEMPLATE).render(title=title, sections=sections)


def write_card(path: Path, sources: CardSources) -> list[Section]:
    """Gather and write the Markdown card atomically; returns the sections (the report also renders them)."""
    sections = gather_card(sources)
    write_text_atomic(path, render_markdown(sections))
    return sections
