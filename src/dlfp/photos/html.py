"""Own photos: OUTDIR/index.html, the before/after page of a run (self-contained, relative links, every name
escaped by the shared jinja environment of dlfp.html).

A library: imports dlfp.html and the summary rows only.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import asdict

from dlfp.html import make_env
from dlfp.photos.summary import PhotoResult

INDEX_HTML = "index.html"
TEMPLATE_NAME = "photos.html"


def _relative_url(path: str) -> str:
    return urllib.parse.quote(path, safe="/")


def render_index(results: Sequence[PhotoResult], run_info: dict) -> str:
    """index.html: per photo its status, the restored photo and each face before/after (relative links)."""
    rows = []
    for result in results:
        rows.append({**asdict(result), "output_url": _relative_url(result.output) if result.output else "",
                     "faces": [{"before": _relative_url(c["before"]), "after": _relative_url(c["after"])}
                               for c in result.crops]})
    return make_env().get_template(TEMPLATE_NAME).render(
        title="Restored photos", nav=(), current=INDEX_HTML, photos=rows, run=run_info)
