"""Checks every report page needs: local links only, images that decode, and a headless Chromium load.

Loaded by path from the report tests (tests/ is not a package). Chromium is Debian's `chromium`; its stderr is
scanned for console errors, refused resources and missing files, and a screenshot proves the page painted.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import shutil
import subprocess
from html import unescape
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


# ------------------------------------------------------------------------------------------ layout checks
# Widths the pages must fit: two desktop widths and a phone (CSS px). Heights are one first screen.
LAYOUT_SCREENS = {"1000": (1000, 800), "1600": (1600, 900), "phone": (390, 844)}
LAYOUT_RESULT_ID = "dlfp-layout-result"
# Run in a copy of the page (the pages forbid scripts): opens every <details>, then lists each element whose
# content spills out of its table cell, or whose box reaches past the viewport outside a scroll box
# (overflow-x auto/scroll/hidden), and whether the page itself scrolls sideways. `firstScreenTop` is the top of
# the element given by `data-first-screen` before anything was opened.
LAYOUT_SCRIPT = """
<script>
addEventListener("load", () => {
  const probe = document.body.dataset.firstScreen;
  const target = probe ? document.getElementById(probe) : null;
  const firstScreenTop = target ? target.getBoundingClientRect().top : null;
  for (const box of document.querySelectorAll("details")) box.open = true;
  const width = document.documentElement.clientWidth;
  const clipped = element => {
    for (let up = element.parentElement; up && up !== document.body; up = up.parentElement) {
      if (["auto", "scroll", "hidden"].includes(getComputedStyle(up).overflowX)) return true;
    }
    return false;
  };
  const name = element => element.tagName.toLowerCase() + (element.id ? "#" + element.id : "")
    + (element.className && typeof element.className === "string" ? "." + element.className.split(" ")[0] : "")
    + ": " + (element.textContent || "").trim().slice(0, 60);
  const overflowing = [];
  for (const cell of document.querySelectorAll("td, th")) {
    if (cell.scrollWidth > cell.clientWidth + 1) overflowing.push("cell " + name(cell));
  }
  for (const element of document.body.querySelectorAll("*")) {
    const rect = element.getBoundingClientRect();
    if (rect.width > 0 && rect.right > width + 1 && !clipped(element)) overflowing.push("viewport " + name(element));
  }
  if (document.documentElement.scrollWidth > width + 1) overflowing.push("page scrolls sideways");
  parent.postMessage(JSON.stringify({width, height: innerHeight, firstScreenTop, overflowing}), "*");
});
</script>
"""
CSP = re.compile(r"<meta http-equiv=\"Content-Security-Policy\"[^>]*>", re.S)


def _chromium_args(profile: Path, size: tuple[int, int]) -> list[str]:
    # headless windows are at least 500 px wide: the page is laid out in an iframe of the exact size instead
    return [chromium() or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--window-size={max(size[0], 500)},{size[1]}"]


def _framed(page: Path, target: str, size: tuple[int, int], tag: str, relay: bool) -> Path:
    """A throwaway host page beside `page` that shows `target` in an iframe of exactly `size` (CSS px)."""
    script = ("<script>addEventListener('message', event => { const out = document.createElement('pre');"
              f" out.id = '{LAYOUT_RESULT_ID}'; out.textContent = event.data; document.body.append(out); }});</script>"
              if relay else "")
    host = page.with_name(f".{tag}-host-{page.name}")
    host.write_text(f'<!DOCTYPE html><html><body style="margin:0">{script}<iframe src="{target}" '
                    f'style="border:0;display:block;width:{size[0]}px;height:{size[1]}px"></iframe></body></html>',
                    encoding="utf-8")
    return host


def measure_layout(page: Path, size: tuple[int, int], profile: Path, first_screen: str | None = None) -> dict:
    """Lay `page` out at `size` in headless Chromium: {width, height, firstScreenTop, overflowing: [...]}.

    The page's script ban is lifted only in a throwaway copy written beside it (so its relative images load),
    removed afterwards."""
    html = CSP.sub("", page.read_text(encoding="utf-8"), count=1)
    if first_screen:
        html = html.replace("<body>", f'<body data-first-screen="{first_screen}">', 1)
    probe = page.with_name(f".layout-probe-{page.name}")
    probe.write_text(html.replace("</body>", LAYOUT_SCRIPT + "</body>", 1), encoding="utf-8")
    host = _framed(page, probe.name, size, "layout", relay=True)
    try:
        result = subprocess.run([*_chromium_args(profile, size), "--virtual-time-budget=5000", "--dump-dom",
                                 host.resolve().as_uri()],
                                capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False)
    finally:
        probe.unlink(missing_ok=True)
        host.unlink(missing_ok=True)
    found = re.search(rf'<pre id="{LAYOUT_RESULT_ID}">(.*?)</pre>', result.stdout, re.S)
    assert found, f"{page.name}: no layout result from Chromium: {result.stderr[-2000:]}"
    return json.loads(unescape(found.group(1)))


def first_screen_shot(page: Path, size: tuple[int, int], shot: Path, profile: Path) -> None:
    """A screenshot of the unmodified page's first screen at `size` (framed, cropped to the frame)."""
    host = _framed(page, page.name, size, "shot", relay=False)
    try:
        result = subprocess.run([*_chromium_args(profile, size), f"--screenshot={shot}", host.resolve().as_uri()],
                                capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False)
    finally:
        host.unlink(missing_ok=True)
    assert shot.is_file() and shot.stat().st_size > MIN_SCREENSHOT_BYTES, result.stderr[-2000:]
    with Image.open(shot) as image:
        image.crop((0, 0, *size)).save(shot)
