"""Stage `report` (`dlfp report`): render every registered page, then the index that links them.

The pages live in dlfp.report (one `*_page.py` module each, registered on import; see dlfp.report to add one).
Each page is written atomically, so a failed build never leaves a half-written page behind.
"""

from __future__ import annotations

import time
from pathlib import Path

from dlfp.io.atomic import write_text_atomic
from dlfp.layout import REPORT_INDEX
from dlfp.params import Params
from dlfp.report import PageContext, load_pages, make_env
from dlfp.report.index import render_index


def run(params: Params, data_dir: Path, out_dir: Path, models_dir: Path = Path("models")) -> dict:
    """Write <out>/<page>.html for every registered page, then <out>/index.html; returns what was written."""
    started = time.monotonic()
    data_dir, out_dir, models_dir = Path(data_dir), Path(out_dir), Path(models_dir)
    pages = load_pages()
    nav = ((("Index", REPORT_INDEX),) + tuple((page.title, page.filename) for page in pages))
    ctx = PageContext(params=params, data_dir=data_dir, out_dir=out_dir, env=make_env(), nav=nav,
                      models_dir=models_dir)
    written = []
    for page in pages:
        write_text_atomic(out_dir / page.filename, page.render(ctx))
        written.append(page.filename)
    write_text_atomic(out_dir / REPORT_INDEX, render_index(ctx, pages))
    written.append(REPORT_INDEX)
    elapsed = time.monotonic() - started
    print(f"report: {len(written)} pages ({', '.join(written)}) in {elapsed:.1f} s -> {out_dir}")
    return {"pages": written, "out": str(out_dir), "seconds": round(elapsed, 1)}
