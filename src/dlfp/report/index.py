"""reports/index.html: every pipeline stage with the pages that cover it, the seed, parameters and versions.

Not a registered page: it links the pages of the registry, so the report stage renders it last.
May import: dlfp.report and its page modules' public constants, dlfp.io, dlfp.params; never dlfp.stages.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from dlfp.io.receipt import package_versions, read_receipt
from dlfp.layout import DATA_FOLDERS, MODEL_FOLDERS, REPORT_INDEX
from dlfp.report import STAGES, Page, PageContext

REPORTED_PACKAGES = ("torch", "torchvision", "numpy", "pillow", "opencv-python-headless", "albumentations",
                     "webdataset", "pyiqa", "dlib-bin", "pydantic", "pyyaml", "jinja2", "matplotlib")


def _stage_outputs(data_dir: Path, models_dir: Path) -> dict[str, Path]:
    """The output folder of every stage that writes a receipt (the report itself writes none)."""
    return {**{stage: data_dir / folder for stage, folder in DATA_FOLDERS.items()},
            **{stage: models_dir / folder for stage, folder in MODEL_FOLDERS.items()}}


def _stage_rows(pages: list[Page], data_dir: Path, models_dir: Path) -> list[dict]:
    """Each pipeline stage with the pages covering it and whether its output folder carries a receipt."""
    outputs = _stage_outputs(data_dir, models_dir)
    rows = []
    for stage in STAGES:
        links = [(page.title, page.filename) for page in pages if stage in page.stages]
        status = None
        if stage in outputs:
            folder = outputs[stage]
            status = "ran" if read_receipt(folder) is not None else "not run yet" if not folder.exists() \
                else "incomplete (no receipt)"
        rows.append({"stage": stage, "links": links, "status": status})
    return rows


def render_index(ctx: PageContext, pages: list[Page]) -> str:
    params = ctx.params
    sections = list(type(params).model_fields)
    return ctx.render(
        REPORT_INDEX, current=REPORT_INDEX, title="dl-fp reports",
        stages=_stage_rows(pages, ctx.data_dir, ctx.models_dir),
        seed=params.seed,
        section_hashes=[(name, params.section_hash(name)) for name in sections]
        + [("all sections", params.section_hash(*sections))],
        params_yaml=yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False, allow_unicode=True,
                                   default_flow_style=None, width=100),
        versions=sorted(package_versions(*REPORTED_PACKAGES).items()),
    )
