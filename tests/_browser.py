"""Checks every report page needs: local links only, images that decode, and a headless Chromium load.

Loaded by path from the report tests (tests/ is not a package). Chromium is Debian's `chromium`; its stderr is
scanned for console errors, refused resources and missing files, and a screenshot proves the page painted.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

CHROMIUM_ERRORS = ("Uncaught", "ERR_FILE_NOT_FOUND", "Failed to load resource", "Refused to")
SCREEN = (1280, 2000)
CHROMIUM_TIMEOUT_S = 120
MIN_SCREENSHOT_BYTES = 1000


class LinkCollector(HTMLParser):
    """Every URL-bearing attribute and every <img src> of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src", "action", "srcset", "poster", "data") and value is not None:
                self.urls.append(value)
                if tag == "img" and name == "src":
                    self.images.append(value)


def collect(html: str) -> LinkCollector:
    parser = LinkCollector()
    parser.feed(html)
    return parser


def assert_image_resolves(src: str, page: Path) -> None:
    """A data: URI that decodes to an image, or a relative file beside the page that decodes."""
    if src.startswith("data:"):
        header, _, payload = src.partition(",")
        assert header in ("data:image/png;base64", "data:image/jpeg;base64"), header
        try:
            raw = base64.b64decode(payload, validate=True)
        except binascii.Error as error:
            raise AssertionError(f"bad base64 image on {page.name}") from error
    else:
        path = page.parent / src.split("#")[0]
        assert path.is_file(), f"{page.name}: image {src} missing"
        raw = path.read_bytes()
    with Image.open(io.BytesIO(raw)) as image:
        image.load()
        assert image.width > 0 and image.height > 0


def assert_links_local(page: Path) -> None:
    """No network: every URL is relative (or a data: image) and every relative target exists."""
    html = page.read_text(encoding="utf-8")
    links = collect(html)
    assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", html)
    for url in links.urls:
        assert not re.match(r"^[a-z][a-z0-9+.-]*:", url) or url.startswith("data:image/"), url
        assert not url.startswith("//"), url
        target = url.split("#")[0]
        if target and not url.startswith("data:"):
            assert (page.parent / target).is_file(), f"{page.name}: link {url} has no target"
    for src in links.images:
        assert_image_resolves(src, page)


def chromium() -> str | None:
    return shutil.which("chromium")


def load_in_chromium(page: Path, shot: Path, profile: Path) -> list[str]:
    """Load `page` headless, save a screenshot to `shot`; returns the console / resource errors it logged."""
    result = subprocess.run(
        [chromium() or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         f"--screenshot={shot}", f"--window-size={SCREEN[0]},{SCREEN[1]}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False)
    assert shot.is_file() and shot.stat().st_size > MIN_SCREENSHOT_BYTES, result.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == SCREEN
    return [line for line in result.stderr.splitlines() if any(mark in line for mark in CHROMIUM_ERRORS)]
