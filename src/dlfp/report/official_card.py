"""The model card of an official GFPGANv1.3/1.4 release file, written beside it by `dlfp restore --weights gfpgan-v1.x`.

It shares the trained model's intended-use and ethics sections (model_card.py); what dl-fp cannot know about a file
it did not train says "not computed", and no figure is typed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from dlfp.io.atomic import write_text_atomic
from dlfp.layout import CARD_NAME
from dlfp.report.model_card import Section, ethics_section, intended_use_section, render_markdown

OFFICIAL_NOT_EVALUATED = "not computed: official weights, not evaluated here"
OFFICIAL_RELEASE_NOTES = {  # the release's own words (TencentARC/GFPGAN README and Comparisons.md), as far as known
    "gfpgan-v1.3": "based on v1.2; more natural restoration, better on very low-quality and on relatively "
                   "high-quality inputs; not very sharp, with a slight change of identity (Comparisons.md)",
    "gfpgan-v1.4": "based on v1.3; more details and better identity (release notes)",
}


def official_card_name(weights_file: Path) -> str:
    """One card per release file (v1.3 and v1.4 share the $DLFP_CACHE/weights folder): GFPGANv1.4.MODEL_CARD.md."""
    return f"{weights_file.stem}.{CARD_NAME}"


def official_card_sections(record: Mapping[str, object]) -> list[Section]:
    """The card of an official GFPGANv1.3/1.4 release file (`dlfp restore --weights gfpgan-v1.4`).

    `record`: dlfp.photos.official_weights.OfficialWeights.record() (name, file, url, sha256, release_sha256,
    matches_release). The intended-use section is the trained model's; what dl-fp cannot know about a file it did
    not train says so, and no figure is typed in.
    """
    name = str(record.get("name"))
    matches = record.get("matches_release")
    details = Section("Model details", "details", bullets=[
        f"Official GFP-GAN release weights {name} ({Path(str(record.get('file'))).name}), GFPGANv1Clean at 512 px "
        "(num_style_feat 512, channel_multiplier 2), loaded by dl-fp's re-implementation of the architecture.",
        f"Downloaded from {record.get('url')}; sha256 {record.get('sha256')} "
        + ("(equals the release file's)" if matches else
           f"(differs from the release file's {record.get('release_sha256')}: a mirror or a re-saved file?)"),
        f"Release notes: {OFFICIAL_RELEASE_NOTES.get(name, 'not known')}.",
        "Authors: Wang et al. (Tencent ARC), Towards Real-World Blind Face Restoration with Generative Facial "
        "Prior (CVPR 2021); code and weights published at github.com/TencentARC/GFPGAN under the Apache License "
        "2.0 (the repository's licence; the release does not state a separate licence for the weights).",
    ])
    data = Section("Training data", "data", paragraphs=[
        "As far as known: the paper trains on FFHQ (Karras et al. 2019; 70,000 Flickr faces at 512 px, released "
        "by NVIDIA under CC BY-NC-SA 4.0, each image under its own Flickr licence) with synthetic degradations "
        "(blur, downsampling, noise, JPEG). The v1.2-v1.4 releases say they were trained with more data and "
        "pre-processing, without naming it; dl-fp cannot verify either.",
    ])
    evaluation = Section("Evaluation", "evaluation", missing=[
        f"{OFFICIAL_NOT_EVALUATED}: PSNR, SSIM, identity and landmark distances on dl-fp's test split; run the "
        "restore and evaluate stages with params restore.weights set to this file to compute them."])
    bias = Section("Bias", "bias", missing=[
        f"{OFFICIAL_NOT_EVALUATED}: colour shift and metric gaps per skin-tone group (the bias stage)."])
    limitations = Section("Limitations", "limitations", bullets=[
        "Unknown training mix and degradation settings for these release files: dl-fp cannot say how they behave "
        "on faces, ages, skin tones or degradations that data under-represents.",
        "The restorer invents detail at 512 px; identity may change (the release's own comparison says so for "
        "v1.3), so a restored face is not evidence of who is shown.",
        "Faces much larger than 512 px in the photo come back upsampled (dl-fp leaves them unless --force).",
    ])
    ethics = Section("Ethical considerations", "ethics", bullets=[
        ethics_section().bullets[0],
        "Skin-tone lightening: face restorers trained on skewed data have been seen to lighten darker faces; "
        f"for these weights that is {OFFICIAL_NOT_EVALUATED} (run the bias stage with them).",
        "dl-fp labels every image it writes as AI-modified (XMP DigitalSourceType compositeWithTrainedAlgorithmic"
        "Media); keep the label and the originals.",
    ])
    return [details, intended_use_section(), data, evaluation, bias, limitations, ethics]


def write_official_card(record: Mapping[str, object]) -> Path:
    """Write the release file's card beside it (atomically, every run: it records the file's current sha256)."""
    weights_file = Path(str(record["file"]))
    path = weights_file.with_name(official_card_name(weights_file))
    write_text_atomic(path, render_markdown(official_card_sections(record),
                                            title=f"Model card: official GFP-GAN weights {record.get('name')}"))
    return path
