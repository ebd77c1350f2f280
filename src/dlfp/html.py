"""The jinja2 environment for dl-fp's HTML pages: autoescape everything, undefined names are errors.

Shared so that code writing HTML outside the report (`dlfp restore INPUT... -o OUT`'s index.html) does not import
the report stage. The templates, the common layout base.html among them, live in dlfp/report/templates.
A library: imports jinja2 only.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

TEMPLATES_DIR = Path(__file__).parent / "report" / "templates"


def make_env() -> jinja2.Environment:
    """Autoescape everything (also templates from strings); undefined names are errors, not blanks."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=jinja2.select_autoescape(["html"], default_for_string=True, default=True),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
