"""Receipts: a small JSON per artifact folder saying what made it, so reports read receipts, not logs."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

from dlfp.io.atomic import write_json_atomic
from dlfp.layout import RECEIPT_NAME


def package_versions(*names: str) -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("dlfp", *names):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_receipt(out_dir: Path, *, stage: str, params_hash: str, seed: int | None, counts: dict,
                  inputs: dict | None = None, packages: tuple[str, ...] = (),
                  extra: dict | None = None) -> dict:
    """Deliberately without timestamps: the receipt is part of a byte-reproducible artifact."""
    receipt = {
        "stage": stage,
        "params_hash": params_hash,
        "seed": seed,
        "counts": counts,
        "inputs": inputs or {},
        "versions": package_versions(*packages),
        **(extra or {}),
    }
    write_json_atomic(Path(out_dir) / RECEIPT_NAME, receipt)
    return receipt


def read_receipt(folder: Path) -> dict | None:
    import json

    path = Path(folder) / RECEIPT_NAME
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
