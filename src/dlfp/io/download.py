"""Downloads that survive real networks: checksums, resume via HTTP Range, retries, and Google Drive's quirks.

A file reaches its final name only after its checksum passed (atomic rename from `<file>.part`), so a file at
the final name is complete: a rerun verifies it and downloads nothing. A dropped connection leaves the `.part`
file, and the next attempt continues it with a Range request (or starts over when the server ignores Range).

Google Drive, the official home of FFHQ, answers with an HTML page instead of the file when its daily quota
is exceeded ("Too many users have viewed or downloaded this file recently") and asks for confirmation before
large files ("can't scan this file for viruses"). The first is a clear error suggesting a mirror; the second
is confirmed automatically, once.

Parts of a file (`span`: a byte range, e.g. one parquet row group) go through the same machinery: the `.part`
file holds the range's bytes, a resume asks for the rest of the range, and the server's Content-Range must
name the expected total size, so pieces of two different versions of a file are never stitched together.
`probe_size` is a single short request that tells an unreachable host (fail fast) from a reachable one.

Trust: every download is capped (`max_bytes`, DEFAULT_MAX_BYTES unless the caller knows the size) and aborts past
it. A URL taken from downloaded data (a metadata file's file_url, a Drive confirmation link) must be http(s)
(`require_web_url`); file: URLs and bare paths are only for URLs the user wrote. A Drive confirmation link is
followed only over https (or http when the page itself came over http, for local test servers) and only to the
same host, or from one Google Drive host to another (DRIVE_HOSTS).

Imports only the standard library and tqdm. One module of about 550 lines on purpose: resume, retries, spans,
caps and the Drive gate are one download state machine (`_attempt` calls into every part of it), and its
errors are shared by all of them; split, each piece would import the others.
"""

from __future__ import annotations

import hashlib
import http.client
import http.cookiejar
import itertools
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import NoReturn

from tqdm import tqdm

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"
BAD_SUFFIX = ".bad"
CHUNK_BYTES = 1 << 16
SNIFF_BYTES = 64 * 1024
PROGRESS_MIN_BYTES = 8 << 20  # show a per-file bar only for files at least this big
MAX_BACKOFF_S = 60.0
USER_AGENT = "dlfp-acquire/0.1 (+https://github.com/; reproducible dataset download)"
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
NOT_FOUND_STATUSES = frozenset({404, 410})
DEFAULT_MAX_BYTES = 8 << 30  # no FFHQ file (metadata 268 MB, a parquet shard < 1 GB) comes close
WEB_SCHEMES = frozenset({"http", "https"})
DRIVE_HOSTS = frozenset({"drive.google.com", "docs.google.com", "drive.usercontent.google.com"})
MIRROR_HINT = ("use a mirror instead: set data.ffhq.url_template (per-file URLs) or data.ffhq.parquet "
               "(parquet shards), or place the file in the cache folder yourself")
_QUOTA_MARKERS = ("too many users have viewed or downloaded this file", "quota exceeded",
                  "download quota", "exceeded its quota")
_CONFIRM_MARKERS = ("can't scan this file for viruses", "cannot scan this file for viruses",
                    "virus scan warning", "download anyway", "confirm=")


class DownloadError(RuntimeError):
    """A download failed for a reason the user can act on; the message names the URL or file."""


class NotFoundError(DownloadError):
    """The server says the file does not exist (404/410): retrying will not help."""


class ChecksumError(DownloadError):
    """The bytes arrived but are not the expected file; the bad copy is moved aside as `<file>.bad`."""


class DriveQuotaError(DownloadError):
    """Google Drive served its quota page instead of the file."""


class TooLargeError(DownloadError):
    """More bytes than the cap (the size the metadata gives, or a parameter): the download was aborted."""


class UntrustedURLError(DownloadError):
    """A URL from downloaded data (not written by the user) has a scheme or host it may not have."""


def require_web_url(url: str, where: str) -> str:
    """`url` if it is http(s); URLs read from downloaded data must never name local files (file:, bare paths)."""
    if urllib.parse.urlsplit(url).scheme.lower() not in WEB_SCHEMES:
        raise UntrustedURLError(f"{where}: URL {url!r} is not http(s); a URL read from downloaded data may not name "
                                "a local file or another scheme")
    return url


class UnreachableError(DownloadError):
    """No connection to the host at all (refused, unknown name, no route, timeout): retrying will not help."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: `retries` extra attempts after the first, waiting backoff_s * 2**n between them."""

    retries: int = 5
    backoff_s: float = 1.0
    timeout_s: float = 60.0

    def wait(self, failures: int) -> float:
        return min(self.backoff_s * (2 ** max(failures - 1, 0)), MAX_BACKOFF_S)


@dataclass(frozen=True)
class Checksums:
    md5: str | None = None
    sha256: str | None = None

    def __bool__(self) -> bool:
        return bool(self.md5 or self.sha256)

    def mismatch(self, path: Path) -> str | None:
        """None when the file matches every given digest, else 'md5: expected X, got Y'."""
        for algorithm, expected in (("md5", self.md5), ("sha256", self.sha256)):
            if expected:
                got = _digest(path, algorithm)
                if got.lower() != expected.lower():
                    return f"{algorithm}: expected {expected.lower()}, got {got}"
        return None


@dataclass(frozen=True)
class Span:
    """Bytes [start, stop) of a remote file whose total size is `total` (checked against Content-Range)."""

    start: int
    stop: int
    total: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop <= self.total:
            raise ValueError(f"byte range [{self.start}, {self.stop}) does not lie in a file of {self.total} bytes")

    @property
    def length(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    downloaded: bool  # False: a valid cached file was used
    bytes_fetched: int  # bytes transferred over the network in this call


class _Incomplete(Exception):
    """A response ended before the announced length: retry and resume from what arrived."""


class _RangeNotSatisfiable(Exception):
    """The server rejected our Range: the `.part` file is unusable; start over."""


# ------------------------------------------------------------------------------------------ public API
def download(url: str, dest: Path | str, *, md5: str | None = None, sha256: str | None = None,
             policy: RetryPolicy | None = None, allow_html: bool = False, progress: bool = True,
             opener: urllib.request.OpenerDirector | None = None, span: Span | None = None,
             max_bytes: int | None = None) -> DownloadResult:
    """Fetch `url` (or only its `span`) to `dest` unless a valid copy is already there; resume, retry, verify.

    More than `max_bytes` (default DEFAULT_MAX_BYTES) aborts the download with TooLargeError."""
    max_bytes = max_bytes or DEFAULT_MAX_BYTES
    dest = Path(dest)
    policy = policy or RetryPolicy()
    sums = Checksums(md5=md5, sha256=sha256)
    if _cached_copy_valid(dest, sums):
        return DownloadResult(dest, downloaded=False, bytes_fetched=0)
    if _is_local(url) and span is None:
        return _copy_local(url, dest, sums)
    dest.parent.mkdir(parents=True, exist_ok=True)
    opener = opener or build_opener()
    resumed = part_path(dest).exists()
    fetched = _fetch_with_retries(url, dest, policy, allow_html, progress, opener, span, max_bytes)
    try:
        _verify_or_quarantine(url, dest, sums)
    except ChecksumError as error:
        if not resumed:
            raise
        log.warning("%s; the partial file from an earlier run may be stale, downloading from scratch", error)
        fetched += _fetch_with_retries(url, dest, policy, allow_html, progress, opener, span, max_bytes)
        _verify_or_quarantine(url, dest, sums)
    return DownloadResult(dest, downloaded=True, bytes_fetched=fetched)


def build_opener() -> urllib.request.OpenerDirector:
    """An opener with cookies (Drive's confirmation flow sets one) and our User-Agent."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    opener.addheaders = [("User-Agent", USER_AGENT)]
    return opener


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_SUFFIX)


def probe_size(url: str, *, timeout_s: float, opener: urllib.request.OpenerDirector | None = None) -> int:
    """The size of the file at `url` from one short request (`Range: bytes=0-0`), without retries.

    A connection that cannot be made at all raises UnreachableError at once; an HTTP error status means the
    host is reachable and is reported like a download error.
    """
    opener = opener or build_opener()
    request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
    try:
        with opener.open(request, timeout=timeout_s) as response:
            content_range = response.headers.get("Content-Range", "")
            match = re.fullmatch(r"bytes \d+-\d+/(\d+)", content_range.strip())
            length = response.headers.get("Content-Length", "")
            if response.status == 206 and match:
                return int(match.group(1))
            if response.status == 200 and length.isdigit():
                return int(length)  # the server ignores Range; the body is not read
    except urllib.error.HTTPError as error:
        error.close()
        if error.code in NOT_FOUND_STATUSES:
            raise NotFoundError(f"{url}: HTTP {error.code} not found; check the URL or the mirror template") from None
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:  # refused, DNS, timeout ...
        raise UnreachableError(f"{url}: {_describe(error)}") from None
    raise DownloadError(f"{url}: the server reports no file size (no Content-Range or Content-Length)")


# ------------------------------------------------------------------------------------------- caching
def _cached_copy_valid(dest: Path, sums: Checksums) -> bool:
    """A file at the final name got there only after verification; recheck the digest when we know it."""
    if not dest.is_file():
        return False
    if not sums:
        return True
    problem = sums.mismatch(dest)
    if problem is None:
        return True
    bad = _quarantine(dest)
    log.warning("cached %s failed its checksum (%s); moved to %s and downloading again", dest, problem, bad)
    return False


def _quarantine(path: Path, dest: Path | None = None) -> Path:
    """Move bad bytes to `<dest>.bad` for inspection, out of the way of the cache and of resumes."""
    dest = dest or path
    bad = dest.with_name(dest.name + BAD_SUFFIX)
    os.replace(path, bad)
    return bad


def _verify_or_quarantine(url: str, dest: Path, sums: Checksums) -> None:
    part = part_path(dest)
    problem = sums.mismatch(part) if sums else None
    if problem is not None:
        bad = _quarantine(part, dest)
        raise ChecksumError(f"{dest}: checksum mismatch for {url} ({problem}); "
                            f"the downloaded bytes were moved to {bad}")
    os.replace(part, dest)


def _is_local(url: str) -> bool:
    scheme = urllib.parse.urlsplit(url).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def _copy_local(url: str, dest: Path, sums: Checksums) -> DownloadResult:
    """A local path or file:// URL is verified in place, not copied: the cache would only duplicate it."""
    source = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path) if url.startswith("file:") else url)
    if not source.is_file():
        raise NotFoundError(f"{source}: file not found (given as {url})")
    problem = sums.mismatch(source) if sums else None
    if problem is not None:
        raise ChecksumError(f"{source}: checksum mismatch ({problem})")
    return DownloadResult(source, downloaded=False, bytes_fetched=0)


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -------------------------------------------------------------------------------------- transferring
def _fetch_with_retries(url: str, dest: Path, policy: RetryPolicy, allow_html: bool, progress: bool,
                        opener: urllib.request.OpenerDirector, span: Span | None = None,
                        max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """Attempts until complete; an attempt that made progress does not use up a retry."""
    failures, fetched, current_url = 0, 0, url
    while True:
        before = _part_size(dest)
        try:
            current_url = _attempt(current_url, url, dest, policy, allow_html, progress, opener, span, max_bytes)
            return fetched + _part_size(dest) - before
        except _RangeNotSatisfiable:
            part_path(dest).unlink(missing_ok=True)
            continue
        except (_Incomplete, OSError, http.client.HTTPException) as error:
            gained = max(_part_size(dest) - before, 0)
            fetched += gained
            failures = 0 if gained else failures + 1
            if failures > policy.retries:
                raise DownloadError(f"{url}: giving up after {policy.retries + 1} failed attempts: "
                                    f"{_describe(error)} (partial file kept at {part_path(dest)} "
                                    "and resumed on the next run)") from None
            wait = policy.wait(max(failures, 1))
            log.warning("%s: %s; retrying in %.1f s (resuming at byte %d)", url, _describe(error), wait,
                        _part_size(dest))
            time.sleep(wait)


def _part_size(dest: Path) -> int:
    try:
        return part_path(dest).stat().st_size
    except FileNotFoundError:
        return 0


def _describe(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"connection failed: {error.reason}"
    return str(error) or type(error).__name__


def _attempt(url: str, original_url: str, dest: Path, policy: RetryPolicy, allow_html: bool, progress: bool,
             opener: urllib.request.OpenerDirector, span: Span | None = None,
             max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """One request; returns the URL that served the file (Drive's confirmation may change it)."""
    if span is not None:
        return _attempt_span(url, dest, policy, progress, opener, span)
    offset = _part_size(dest)
    request = urllib.request.Request(url)
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = opener.open(request, timeout=policy.timeout_s)
    except urllib.error.HTTPError as error:
        _raise_http_error(error, url, original_url, offset)
    with response:
        status = response.status
        if offset and status == 200:
            log.info("%s: server ignored the Range request; starting over", url)
            offset = 0
        elif offset and status == 206:
            _check_content_range(response, offset, url)
        head = response.read(SNIFF_BYTES) if not allow_html else b""
        if not allow_html and _looks_like_html(response, head, offset):
            confirm_url = _drive_gate(head, url, original_url)
            response.close()
            return _attempt(confirm_url, original_url, dest, policy, allow_html, progress, opener, None, max_bytes)
        _stream(response, head, dest, offset, url, progress, max_bytes)
    return url


def _attempt_span(url: str, dest: Path, policy: RetryPolicy, progress: bool,
                  opener: urllib.request.OpenerDirector, span: Span) -> str:
    """One request for the rest of `span`; the server must answer 206 for the file size we planned with."""
    offset = _part_size(dest)
    if offset > span.length:
        part_path(dest).unlink()
        offset = 0
    if offset == span.length:
        return url  # a complete `.part` from an interrupted run: only the rename was missing
    request = urllib.request.Request(url, headers={"Range": f"bytes={span.start + offset}-{span.stop - 1}"})
    try:
        response = opener.open(request, timeout=policy.timeout_s)
    except urllib.error.HTTPError as error:
        _raise_http_error(error, url, url, offset)
    with response:
        if response.status != 206:
            raise DownloadError(f"{url}: the server ignored a Range request (HTTP {response.status}), so parts of "
                                "the file cannot be fetched; set the mirror's fetch: shards to download whole files")
        _check_content_range(response, span.start + offset, url, total=span.total)
        _stream(response, b"", dest, offset, url, progress, span.length)
    return url


def _raise_http_error(error: urllib.error.HTTPError, url: str, original_url: str, offset: int) -> NoReturn:
    """Map a status to the right exception: not found, range reset, Drive quota, retryable or final."""
    try:
        if error.code in NOT_FOUND_STATUSES:
            raise NotFoundError(f"{url}: HTTP {error.code} not found; check the URL or the mirror template")
        if error.code == 416 and offset:
            raise _RangeNotSatisfiable()
        body = _read_quietly(error)
    finally:
        error.close()
    if _is_html_bytes(body):
        _raise_if_quota(body, original_url)
    if error.code in RETRY_STATUSES:
        raise error
    raise DownloadError(f"{url}: HTTP {error.code} {error.reason}")


def _read_quietly(response: object) -> bytes:
    try:
        return response.read(SNIFF_BYTES)  # type: ignore[attr-defined]
    except (OSError, http.client.HTTPException):
        return b""


def _check_content_range(response: http.client.HTTPResponse, offset: int, url: str,
                         total: int | None = None) -> None:
    content_range = response.headers.get("Content-Range", "")
    match = re.match(r"bytes (\d+)-(?:\d+/(\d+|\*))?", content_range)
    if not match or int(match.group(1)) != offset:
        raise DownloadError(f"{url}: asked for bytes from {offset}, server sent '{content_range}'")
    if total is not None and match.group(2) != str(total):
        raise DownloadError(f"{url}: the file is now {match.group(2)} bytes, not the {total} bytes planned with; "
                            "it changed on the server: delete its cached pieces and run again")


def _expected_total(response: http.client.HTTPResponse, offset: int) -> int | None:
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _stream(response: http.client.HTTPResponse, head: bytes, dest: Path, offset: int, url: str,
            progress: bool, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Append to `.part` (or rewrite it when starting over) and check that the announced length arrived; more
    than `max_bytes` in all (announced or received) aborts and deletes the `.part` file."""
    total = _expected_total(response, offset)
    part = part_path(dest)
    if total is not None and total > max_bytes:
        part.unlink(missing_ok=True)
        raise TooLargeError(f"{url}: announces {total} bytes, more than the limit of {max_bytes}; not downloaded")
    mode = "ab" if offset else "wb"
    show = progress and total is not None and total >= PROGRESS_MIN_BYTES
    with open(part, mode) as handle, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                          desc=dest.name, disable=not show, leave=False) as bar:
        if offset == 0:
            handle.truncate(0)
        received = offset
        for chunk in itertools.chain([head], iter(lambda: response.read(CHUNK_BYTES), b"")):
            received += len(chunk)
            if received > max_bytes:
                handle.close()
                part.unlink(missing_ok=True)
                raise TooLargeError(f"{url}: more than the limit of {max_bytes} bytes; download aborted")
            handle.write(chunk)
            bar.update(len(chunk))
        handle.flush()
        os.fsync(handle.fileno())
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Incomplete(f"connection closed after {size} of {total} bytes")
    if total is not None and size > total:
        part.unlink()
        raise DownloadError(f"{url}: received {size} bytes, more than the announced {total}")


# -------------------------------------------------------------------------------------- Google Drive
def _looks_like_html(response: http.client.HTTPResponse, head: bytes, offset: int) -> bool:
    if offset:
        return False
    content_type = response.headers.get("Content-Type", "").lower()
    return "text/html" in content_type or _is_html_bytes(head)


def _is_html_bytes(data: bytes) -> bool:
    start = data[:1024].lstrip().lower()
    return start.startswith((b"<!doctype html", b"<html")) or b"<html" in start[:200]


def _raise_if_quota(body: bytes, url: str) -> None:
    text = body.decode("utf-8", errors="replace").lower()
    if any(marker in text for marker in _QUOTA_MARKERS):
        raise DriveQuotaError(
            f"{url}: Google Drive's download quota for this file is exceeded (it served its 'Too many users "
            f"have viewed or downloaded this file recently' page instead of the file). Wait up to 24 h, or "
            f"{MIRROR_HINT}.")


def _drive_gate(body: bytes, url: str, original_url: str) -> str:
    """Quota page -> clear error; virus-scan confirmation -> the confirmed URL (followed once)."""
    _raise_if_quota(body, original_url)
    text = body.decode("utf-8", errors="replace")
    if url != original_url:
        raise DownloadError(f"{original_url}: still got an HTML page after confirming Google Drive's "
                            f"virus-scan warning; {MIRROR_HINT}")
    if any(marker in text.lower() for marker in _CONFIRM_MARKERS):
        confirmed = _confirmation_url(text, url)
        if confirmed:
            _check_confirmation_url(confirmed, url)
            log.info("%s: confirming Google Drive's virus-scan warning for a large file", original_url)
            return confirmed
    title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
    page = f" titled '{title.group(1).strip()[:80]}'" if title else ""
    raise DownloadError(f"{url}: expected a file but got an HTML page{page}; the link may need a login or "
                        f"be a web page rather than a direct download. {MIRROR_HINT}")


def _check_confirmation_url(confirmed: str, url: str) -> None:
    """A confirmation link comes from a downloaded page: https (no downgrade from https), and the same host or
    another Google Drive host."""
    came, goes = urllib.parse.urlsplit(url), urllib.parse.urlsplit(confirmed)
    allowed_schemes = {"https"} if came.scheme.lower() == "https" else {"https", "http"}
    same_site = goes.hostname == came.hostname or {goes.hostname, came.hostname} <= DRIVE_HOSTS
    if goes.scheme.lower() not in allowed_schemes or not same_site:
        raise UntrustedURLError(f"{url}: Google Drive's confirmation page links to {confirmed!r}, another host or "
                                "scheme; not followed")


class _FormParser(HTMLParser):
    """Collects the download form's action and hidden inputs (Drive's 'Download anyway' button)."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value or "" for key, value in attrs}
        if tag == "form" and "download" in values.get("action", ""):
            self.action, self._in_form = values["action"], True
        elif tag == "input" and self._in_form and values.get("name"):
            self.fields[values["name"]] = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def _confirmation_url(html: str, url: str) -> str | None:
    form = _FormParser()
    form.feed(html)
    if form.action:
        action = urllib.parse.urljoin(url, form.action.replace("&amp;", "&"))
        return f"{action}{'&' if '?' in action else '?'}{urllib.parse.urlencode(form.fields)}"
    link = re.search(r'href="([^"]*confirm=[^"]+)"', html)
    if link:
        return urllib.parse.urljoin(url, link.group(1).replace("&amp;", "&"))
    token = re.search(r"confirm=([0-9A-Za-z_-]+)", html)
    if token:
        return f"{url}{'&' if '?' in url else '?'}confirm={token.group(1)}"
    return None

