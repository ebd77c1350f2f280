"""Shard locations beyond local folders: http(s) URLs, `pipe:` commands and brace ranges.

A location is one of
- a local folder holding `index.json` (read by dlfp.shards.local);
- a folder URL, e.g. `https://host/shards/`: the index is `<base>/index.json`, each shard `<base>/<record path>`;
- a shard list: a brace range or a single shard, as a URL or a `pipe:` command, e.g.
  `https://host/shards/train/clean-{000000..000003}.tar` or
  `pipe:aws s3 cp s3://bucket/shards/train/clean-{000000..000003}.tar -`. Only the named shards are read; their
  index is found by replacing the shard's file name (then its split folder too) by `index.json` in the same
  URL or command.
Expansion and opening are webdataset's own (`wds.shardlists.expand_urls`: braceexpand; `wds.gopen`: curl for
http(s), the shell for `pipe:`). A `pipe:` location runs as a shell command: trust it like a command line. The
index is data, not a command line: every shard path in it must be a plain relative shard file name
(SHARD_PATH), checked before any shard is opened, and is quoted where it is put into a `pipe:` command.
Every reader keeps to the shards a brace range names (StreamedShards.records, applied by iter_streamed_samples).

Streamed shards cannot be checked before they are read. Each one is hashed while it streams and compared with
its index sha256 when it ends: a truncated or corrupted shard stops the run naming the shard, but the samples
read before the end of that shard have already been handed out. For a check before any use, download the
shards and read them from a local folder (dlfp.shards.local.verify_shards).

Imports webdataset and dlfp.shards.format only (the index format, its path checks, errors and member reader).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shlex
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds

from dlfp.layout import INDEX_NAME
from dlfp.shards.format import (
    ShardCorruptError,
    ShardMemberTooLargeError,
    check_index,
    check_shard_path,
    tar_members,
)

PIPE_PREFIX = "pipe:"
INDEX_SEARCH_DEPTH = 2  # the shard's own folder, then the one above it (<root>/<split>/<shard>.tar)
READ_CHUNK = 1 << 20
_URL_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]+://", re.IGNORECASE)
# pathlib collapses "//": Path("https://h/x") is "https:/h/x". Stage run() functions wrap their arguments in
# Path, so a URL can arrive like this; the scheme's double slash is put back (file: URLs are left alone).
_COLLAPSED_SCHEME = re.compile(r"\b(https?|s3|gs|sftp|ftps|scp|ais|hf):/(?!/)", re.IGNORECASE)
_BRACE_RANGE = re.compile(r"\{[^{}]*(\.\.|,)[^{}]*\}")
_SHARD_TOKEN = re.compile(r"\S+\.tar\b")


class StreamedShardError(RuntimeError):
    """A streamed location cannot be resolved or read (no index found, a failing command, an HTTP error)."""


def normalise_location(location: str | Path) -> str:
    """The location as a string, with a URL scheme's `//` restored if pathlib collapsed it."""
    return _COLLAPSED_SCHEME.sub(r"\1://", str(location))


def is_streamed(location: str | Path) -> bool:
    """True for URLs, `pipe:` commands and brace ranges; False for a plain local path."""
    text = normalise_location(location)
    return text.startswith(PIPE_PREFIX) or bool(_URL_SCHEME.match(text)) or bool(_BRACE_RANGE.search(text))


def expand(location: str | Path) -> list[str]:
    """Brace ranges expanded by webdataset (`a-{0..2}.tar` -> three URLs)."""
    return wds.shardlists.expand_urls(normalise_location(location))


def read_bytes(url: str) -> bytes:
    """The whole content of a URL, `pipe:` command or path, through wds.gopen; errors name the URL."""
    try:
        with wds.gopen(url, "rb") as stream:
            return stream.read()
    except OSError as error:
        raise StreamedShardError(f"{url}: cannot read ({error})") from error


@dataclass(frozen=True)
class StreamedShards:
    """Where a streamed shard set lives: a record path `p` is read from `prefix + p + suffix`."""

    prefix: str
    suffix: str
    index: dict
    selected: frozenset[str] | None = None  # record paths named by a shard list; None: every shard in the index

    def url(self, relative: str) -> str:
        """Where a shard lives; in a `pipe:` command the path is quoted for the shell."""
        if self.prefix.startswith(PIPE_PREFIX):
            return f"{self.prefix}{shlex.quote(relative)}{self.suffix}"
        return f"{self.prefix}{relative}{self.suffix}"

    @property
    def index_url(self) -> str:
        return self.url(INDEX_NAME)

    def records(self, records: Iterable[Mapping]) -> list[dict]:
        """`records` restricted to the shards this location names."""
        return [dict(r) for r in records if self.selected is None or r["path"] in self.selected]


def _load_index(url: str) -> dict | None:
    try:
        return json.loads(read_bytes(url))
    except (StreamedShardError, ValueError):
        return None


def _index_paths(index: Mapping) -> set[str]:
    """Shard paths of a shards index ({splits: {split: {shards}}}) or a pairs index ({splits: {split: {presets}}})."""
    groups = []
    for split in index.get("splits", {}).values():
        groups += [split, *split.get("presets", {}).values()]
    return {record["path"] for group in groups for record in group.get("shards", [])}


def _resolve_list(location: str, urls: list[str]) -> StreamedShards:
    match = list(_SHARD_TOKEN.finditer(urls[0]))
    if not match:
        raise StreamedShardError(f"{location}: names no .tar shard and is not a folder URL")
    token = match[-1]
    parts = token.group(0).split("/")
    tried = []
    for depth in range(1, min(INDEX_SEARCH_DEPTH, len(parts) - 1) + 1):
        prefix = urls[0][:token.start()] + "/".join(parts[:-depth]) + "/"
        suffix = urls[0][token.end():]
        candidate = StreamedShards(prefix, suffix, {})
        tried.append(candidate.index_url)
        index = _load_index(candidate.index_url)
        if index is None:
            continue
        check_index(index, candidate.index_url)
        known = _index_paths(index)
        selected = []
        for url in urls:
            relative = url[len(prefix):len(url) - len(suffix)] if suffix else url[len(prefix):]
            if not (url.startswith(prefix) and url.endswith(suffix) and relative in known):
                raise StreamedShardError(f"{url}: not listed in the index {candidate.index_url}")
            selected.append(relative)
        return StreamedShards(prefix, suffix, index, frozenset(selected))
    raise StreamedShardError(f"{location}: no shard index found (tried {', '.join(tried)}); streamed shards need "
                             f"the {INDEX_NAME} that `dlfp shard` / `dlfp degrade` wrote beside them")


def resolve(location: str | Path) -> StreamedShards:
    """Find the index of a streamed location (see the module docstring) and which of its shards are meant."""
    text = normalise_location(location)
    urls = expand(text)
    if len(urls) == 1 and not _SHARD_TOKEN.search(urls[0]):
        if text.startswith(PIPE_PREFIX):
            raise StreamedShardError(f"{text}: a pipe: location must name its shards (e.g. a brace range of .tar "
                                     "files), so that the index beside them can be found")
        base = StreamedShards(text.rstrip("/") + "/", "", {})
        index = _load_index(base.index_url)
        if index is None:
            raise StreamedShardError(f"{base.index_url}: shard index missing or unreadable; streamed shards need "
                                     f"the {INDEX_NAME} written by the stage that made them")
        return StreamedShards(base.prefix, "", check_index(index, base.index_url))
    return _resolve_list(text, urls)


def index_digest(location: str | Path) -> str:
    """sha256 of a location's index.json (a local folder or a streamed location), for receipts."""
    if not is_streamed(location):
        return hashlib.sha256((Path(location) / INDEX_NAME).read_bytes()).hexdigest()
    return hashlib.sha256(read_bytes(resolve(location).index_url)).hexdigest()


class _HashingReader:
    """A read-only stream that hashes every byte it hands out."""

    def __init__(self, stream: object) -> None:
        self.stream = stream
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)  # type: ignore[attr-defined]
        self.sha256.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Read past the tar end-of-archive marker to the real end, so the digest covers the whole file."""
        while self.read(READ_CHUNK):
            pass


def iter_streamed_shard(url: str, expected_sha256: str | None) -> Iterator[dict]:
    """Raw samples of one streamed shard (as wds.WebDataset yields them), checked against the index at its end.

    Members are read into memory (never extracted, format.tar_members), so member names cannot reach the file
    system, and a member over format.MAX_MEMBER_BYTES stops the run naming the shard before any of it is read."""
    stream = wds.gopen(url, "rb")
    reader = _HashingReader(stream)
    try:
        files = ({**entry, "__url__": url} for entry in tar_members(reader, url))
        yield from wds.tariterators.group_by_keys(files)
        reader.drain()
    except ShardMemberTooLargeError:  # the rest is never read: a cut pipe's exit status means nothing
        with contextlib.suppress(OSError):
            stream.close()
        raise
    except (tarfile.TarError, EOFError, ValueError) as error:
        with contextlib.suppress(OSError):
            reader.drain()
        _close(stream, url)  # a failed download or command is named as such, not as a bad shard
        raise ShardCorruptError(f"{url}: unreadable tar after {reader.size} bytes ({error}); the shard is "
                                "truncated or corrupted") from error
    except OSError as error:  # curl or the pipe command failed mid-stream
        with contextlib.suppress(OSError):
            stream.close()
        raise StreamedShardError(f"{url}: reading failed ({error})") from error
    except BaseException:  # stopped early by the consumer, or failed: a cut pipe's exit status means nothing
        with contextlib.suppress(OSError):
            stream.close()
        raise
    _close(stream, url)
    actual = reader.sha256.hexdigest()
    if expected_sha256 is not None and actual != expected_sha256:
        raise ShardCorruptError(f"{url}: streamed sha256 {actual[:12]}... ({reader.size} bytes) does not match the "
                                f"index ({expected_sha256[:12]}...); the shard is truncated or corrupted")


def _close(stream: object, url: str) -> None:
    try:
        stream.close()  # type: ignore[attr-defined]
    except OSError as error:  # curl or the pipe command exited with an error
        raise StreamedShardError(f"{url}: reading failed ({error})") from error


def iter_streamed_samples(source: StreamedShards, records: Iterable[Mapping]) -> Iterator[dict]:
    """Raw samples of those `records` the location names (a brace range's shards), in order, each shard streamed
    from `source` and checked as it ends."""
    records = source.records(records)
    for record in records:  # all checked before the first shard is opened
        check_shard_path(record["path"], source.index_url)
    for record in records:
        yield from iter_streamed_shard(source.url(record["path"]), record.get("sha256"))
