"""The report pages' library: static, self-contained HTML pages, one module per page, joined by a registry.

To add a page, write one module `dlfp/report/<name>_page.py` (and its template in templates/) that builds a
`Page` and calls `register(page)` at import time: `load_pages` imports every `*_page` module of this package,
and the report stage (dlfp.stages.report) writes every registered page, then the index (dlfp.report.index) that
links them. Nothing else names the page, except the report stage's outputs in dvc.yaml and
workflow/rules/report.smk.
Pages read only stage outputs, through dlfp.report.readers; plots and thumbnails come from dlfp.report.plots.
May import: dlfp libraries (io, params, data formats), never dlfp.stages.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from dlfp.html import make_env  # noqa: F401 - re-exported: pages and stages take the env from here
from dlfp.layout import STAGES  # the index lists them all, linked to the page covering each

if TYPE_CHECKING:
    from dlfp.params import Params

PAGE_MODULE_SUFFIX = "_page"  # dlfp/report/<name>_page.py registers a page when imported


@dataclass(frozen=True)
class PageContext:
    """What every page needs: validated params, where inputs live, where pages go, and the template env."""

    params: Params
    data_dir: Path
    out_dir: Path
    env: jinja2.Environment
    nav: tuple[tuple[str, str], ...] = ()  # (title, relative href) of every page in this run
    models_dir: Path = Path("models")  # the training stages' outputs (models/prior, models/gfpgan)

    def render(self, template: str, current: str, **values: Any) -> str:
        """Render with the shared navigation; autoescaping is on for every value passed here."""
        return self.env.get_template(template).render(nav=self.nav, current=current, **values)


@dataclass(frozen=True)
class Page:
    """One report page as the registry knows it: what the index and the navigation show, and how to render it."""

    slug: str  # short unique name, e.g. "data"
    title: str
    filename: str  # relative to the reports folder, e.g. "data.html"
    stages: tuple[str, ...]  # pipeline stages this page reports on (index links them here)
    render: Callable[[PageContext], str] = field(compare=False)

    def __post_init__(self) -> None:
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise ValueError(f"page {self.slug!r}: unknown stages {sorted(unknown)}")
        if "/" in self.filename or not self.filename.endswith(".html") or self.filename == "index.html":
            raise ValueError(f"page {self.slug!r}: filename must be a plain *.html name, not index.html")


_REGISTRY: dict[str, Page] = {}


def register(page: Page) -> Page:
    """Add a page; registering the same slug twice (e.g. a module re-import) replaces the earlier one."""
    clash = [other.slug for other in _REGISTRY.values()
             if other.filename == page.filename and other.slug != page.slug]
    if clash:
        raise ValueError(f"page {page.slug!r}: file {page.filename} is already written by page {clash[0]!r}")
    _REGISTRY[page.slug] = page
    return page


def registered_pages() -> list[Page]:
    """Pages in pipeline order (by their first stage), so the navigation follows the data flow."""
    def first_stage(page: Page) -> int:
        return min((STAGES.index(stage) for stage in page.stages), default=len(STAGES))

    return sorted(_REGISTRY.values(), key=lambda page: (first_stage(page), page.slug))


def load_pages() -> list[Page]:
    """Import every page module of this package (each registers itself), then return the registered pages."""
    for module in sorted(info.name for info in pkgutil.iter_modules(__path__)
                         if info.name.endswith(PAGE_MODULE_SUFFIX)):
        importlib.import_module(f"{__name__}.{module}")
    return registered_pages()
