"""Stage entry for `dlfp report`: render every registered page, then the index that links them.

To add a page: write `dlfp/report/<name>_page.py` that calls `register(Page(...))` and add its module name to
PAGE_MODULES. Each page is written atomically, so a failed build never leaves a half-written page behind.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import jinja2
import yaml

from dlfp.io.atomic import write_text_atomic
from dlfp.io.receipt import package_versions, read_receipt
from dlfp.params import Params
from dlfp.report import STAGES, Page, PageContext, registered_pages
from dlfp.report.data_page import STAGE_FOLDERS

PAGE_MODULES = ("dlfp.report.data_page", "dlfp.report.training_page", "dlfp.report.evaluation_page",
                "dlfp.report.bias_page", "dlfp.report.model_page")
TEMPLATES_DIR = Path(__file__).parent / "templates"
INDEX_NAME = "index.html"
REPORTED_PACKAGES = ("torch", "torchvision", "numpy", "pillow", "opencv-python-headless", "albumentations",
                     "webdataset", "pyiqa", "dlib-bin", "pydantic", "pyyaml", "jinja2", "matplotlib")


def make_env() -> jinja2.Environment:
    """Autoescape everything (also templates from strings); undefined names are errors, not blanks."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=jinja2.select_autoescape(["html"], default_for_string=True, default=True),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def load_pages() -> list[Page]:
    for module in PAGE_MODULES:
        importlib.import_module(module)
    return registered_pages()


def _stage_outputs(data_dir: Path, models_dir: Path) -> dict[str, Path]:
    """The output folder of every stage that writes a receipt (the report itself writes none)."""
    return {**{stage: data_dir / folder for stage, folder in STAGE_FOLDERS.items()},
            "train_prior": models_dir / "prior", "train": models_dir / "gfpgan", "restore": data_dir / "restored",
            "evaluate": data_dir / "evaluation", "bias": data_dir / "bias"}


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
        INDEX_NAME, current=INDEX_NAME, title="dl-fp reports",
        stages=_stage_rows(pages, ctx.data_dir, ctx.models_dir),
        seed=params.seed,
        section_hashes=[(name, params.section_hash(name)) for name in sections]
        + [("all sections", params.section_hash(*sections))],
        params_yaml=yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False, allow_unicode=True,
                                   default_flow_style=None, width=100),
        versions=sorted(package_versions(*REPORTED_PACKAGES).items()),
    )


def run(params: Params, data_dir: Path, out_dir: Path, models_dir: Path = Path("models")) -> dict:
    """Write <out>/<page>.html for every registered page, then <out>/index.html; returns what was written."""
    started = time.monotonic()
    data_dir, out_dir, models_dir = Path(data_dir), Path(out_dir), Path(models_dir)
    pages = load_pages()
    nav = ((("Index", INDEX_NAME),) + tuple((page.title, page.filename) for page in pages))
    ctx = PageContext(params=params, data_dir=data_dir, out_dir=out_dir, env=make_env(), nav=nav,
                      models_dir=models_dir)
    written = []
    for page in pages:
        write_text_atomic(out_dir / page.filename, page.render(ctx))
        written.append(page.filename)
    write_text_atomic(out_dir / INDEX_NAME, render_index(ctx, pages))
    written.append(INDEX_NAME)
    elapsed = time.monotonic() - started
    print(f"report: {len(written)} pages ({', '.join(written)}) in {elapsed:.1f} s -> {out_dir}")
    return {"pages": written, "out": str(out_dir), "seconds": round(elapsed, 1)}
