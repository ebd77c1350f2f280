"""reports/model.html and reports/MODEL_CARD.md: the complete model card of the trained GFP-GAN.

The report stage is the first point where every input of the card exists (models/gfpgan from train,
reports/metrics.json from evaluate, reports/bias.json from bias), so the complete card is written here; the train
stage writes a first card beside the weights from the same gatherer (see dlfp.report.model_card).
"""

from __future__ import annotations

from dlfp.io.atomic import write_text_atomic
from dlfp.layout import BIAS_JSON, CARD_NAME, DATA_FOLDERS, MANIFEST_NAME, METRICS_JSON, MODEL_FOLDERS, PER_IMAGE_NAME
from dlfp.report import Page, PageContext, register
from dlfp.report.model_card import CardSources, gather_card, render_markdown

PAGE_FILE = "model.html"


def render(ctx: PageContext) -> str:
    sources = CardSources(model_dir=ctx.models_dir / MODEL_FOLDERS["train"],
                          manifest=ctx.data_dir / DATA_FOLDERS["acquire"] / MANIFEST_NAME,
                          metrics=ctx.out_dir / METRICS_JSON, bias=ctx.out_dir / BIAS_JSON,
                          data_size=ctx.params.data.size,
                          per_image=ctx.data_dir / DATA_FOLDERS["evaluate"] / PER_IMAGE_NAME)
    sections = gather_card(sources)
    write_text_atomic(ctx.out_dir / CARD_NAME, render_markdown(sections))
    return ctx.render(PAGE_FILE, current=PAGE_FILE, title="Model card: GFP-GAN", sections=sections)


# Listed under bias (its findings) and report (the stage that writes the complete card), so the navigation puts
# the card last, after the pages whose results it sums up.
register(Page(slug="model", title="Model card", filename=PAGE_FILE, stages=("bias", "report"), render=render))
