"""Reading WebDataset tars back in tests: {sample key: {extension: bytes}}, in archive order."""

from __future__ import annotations

import tarfile
from pathlib import Path


def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            key, extension = member.name.split(".", 1)
            samples.setdefault(key, {})[extension] = archive.extractfile(member).read()
    return samples
