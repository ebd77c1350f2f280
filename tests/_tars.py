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


def record_extracted_members(monkeypatch) -> list[str]:  # noqa: ANN001 (pytest.MonkeyPatch)
    """The names of the tar members whose data anything opens from now on (tarfile.TarFile.extractfile)."""
    extracted: list[str] = []
    extractfile = tarfile.TarFile.extractfile

    def recording_extractfile(self: tarfile.TarFile, member: tarfile.TarInfo | str) -> object:
        extracted.append(member if isinstance(member, str) else member.name)
        return extractfile(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", recording_extractfile)
    return extracted
