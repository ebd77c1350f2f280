"""Tolerant readers of stage outputs, shared by every report page and the model card.

A page must render whatever state the pipeline is in, so these readers never raise on a missing or damaged
file: they return None (or an empty value) and append a sentence naming the file and the reason to `errors`,
which the page shows. Paths named inside index files are only followed when they stay inside their folder
(`contained`), and tars are read in memory (webdataset groups the members into samples): nothing is extracted
to disk, and a member whose header claims more than dlfp.shards.format.MAX_MEMBER_BYTES is refused before any of
it is read (dlfp.shards.format.tar_members, the reader every shard reader uses).
May import: the standard library, webdataset and dlfp.shards.format; never a page module or a stage.
"""

from __future__ import annotations

import csv
import json
import tarfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from webdataset.tariterators import group_by_keys

from dlfp.shards.format import tar_members

JSON_READ_ERRORS = (OSError, UnicodeDecodeError, json.JSONDecodeError)


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class StageInputs:
    """One stage's artifact folder as a page sees it; `errors` collects damaged files instead of raising."""

    stage: str
    folder: Path
    label: str  # how the folder is shown on the page
    ran: bool
    receipt: dict | None = None
    errors: list[str] = field(default_factory=list)


def mapping(value: object) -> Mapping:
    """`value` when it is a mapping, else an empty one: lets a page walk JSON of any shape."""
    return value if isinstance(value, Mapping) else {}


def read_json(path: Path, errors: list[str]) -> object | None:
    """Any JSON value; None when the file is absent (silently) or unreadable ('<name>: unreadable (...)')."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except JSON_READ_ERRORS as error:
        errors.append(f"{path.name}: unreadable ({error})")
        return None


def read_json_object(path: Path | None, errors: list[str], what: str) -> dict | None:
    """A JSON object for `what`; every way it can fail (absent too) is one 'not computed: <what> — ...' line.

    None without a line when `path` is None: the caller has no such input (the model card at training time).
    """
    if path is None:
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        errors.append(f"not computed: {what} — {path} does not exist (its stage has not run)")
        return None
    except JSON_READ_ERRORS as error:
        errors.append(f"not computed: {what} — {path} is unreadable ({type(error).__name__}: {error})")
        return None
    if not isinstance(document, dict):
        errors.append(f"not computed: {what} — {path} is not a JSON object")
        return None
    return document


def read_csv(path: Path, errors: list[str]) -> Table | None:
    """The whole CSV as a Table (first row = header); None when absent or unreadable."""
    if not path.exists():
        return None
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        errors.append(f"{path.name}: unreadable ({error})")
        return None
    if not rows:
        return Table([], [])
    return Table(rows[0], rows[1:])


def read_jsonl(path: Path, errors: list[str]) -> list[dict] | None:
    """The JSON-object lines of a .jsonl file; other lines are skipped and counted in one error line."""
    if not path.exists():
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        errors.append(f"{path.name}: unreadable ({error})")
        return None
    records, bad = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    if bad:
        errors.append(f"{path.name}: {bad} line(s) are not JSON objects and were skipped")
    return records


def receipt_view(receipt: Mapping | None) -> dict | None:
    """A stage receipt as rows for the receipt table of a page (known keys first, the rest under 'extra')."""
    if receipt is None:
        return None
    known = {"stage", "params_hash", "seed", "counts", "inputs", "versions"}
    return {
        "params_hash": str(receipt.get("params_hash", "")),
        "seed": receipt.get("seed"),
        "counts": [(str(k), json.dumps(v)) for k, v in (receipt.get("counts") or {}).items()],
        "inputs": [(str(k), json.dumps(v)) for k, v in (receipt.get("inputs") or {}).items()],
        "versions": [(str(k), str(v)) for k, v in (receipt.get("versions") or {}).items()],
        "extra": [(str(k), json.dumps(v)) for k, v in receipt.items() if k not in known],
    }


def split_presets(index: object, split: str) -> Mapping | None:
    """Tolerant read of one split's presets in a pairs index (dlfp.shards.format.pair_presets raises instead)."""
    splits = index.get("splits") if isinstance(index, Mapping) else None
    entry = splits.get(split) if isinstance(splits, Mapping) else None
    presets = entry.get("presets") if isinstance(entry, Mapping) else None
    return presets if isinstance(presets, Mapping) else None


# -------------------------------------------------------------------------------------------- untrusted paths
def contained(folder: Path, relative: str) -> Path | None:
    """A path named in an index file, only if it stays under `folder`: no absolute path, no `..`.

    Checked on the text, not resolved: DVC may check artifacts out as symlinks into its cache.
    """
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    if not parts or parts[0] == "/" or ".." in parts or "\0" in relative:
        return None
    return folder.joinpath(*parts)


def safe_image_path(images_dir: Path, sample_id: str) -> Path | None:
    """The image of an id only if the id is a plain file name: ids are metadata, not trusted paths."""
    if sample_id in ("", ".", "..") or any(char in sample_id for char in "/\\\0"):
        return None
    return contained(images_dir, f"{sample_id}.png")


# ----------------------------------------------------------------------------------------------------- tars
def _duplicate_member(error: Exception) -> bool:
    """group_by_keys refuses a repeated member name with a ValueError: for a page that is a damaged tar."""
    raise tarfile.ReadError(f"duplicate member: {error.args[0] if error.args else error}") from error


def iter_tar_samples(path: Path, wants_images: Callable[[], bool]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {extension: bytes}) per run of regular members with one WebDataset key (key = path up to the
    first dot of the base name); the json member always, *png members only while `wants_images()` says so.

    Links and other non-file members are skipped. A damaged tar, or one with a member over the shard member limit
    (dlfp.shards.format.ShardMemberTooLargeError, named by the tar's file name), raises tarfile.TarError (or OSError).
    """
    with open(path, "rb") as stream:
        files = ({**entry, "__url__": str(path)} for entry in tar_members(stream, path.name))
        for sample in group_by_keys(files, lcase=False, handler=_duplicate_member):
            images = wants_images()
            yield sample["__key__"], {extension: payload for extension, payload in sample.items()
                                      if extension == "json" or (extension.endswith("png") and images)}
