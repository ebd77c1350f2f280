"""The acquire stage's records: what a source offers (candidates, selections) and what became of each file.

Imports only the standard library.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

STAGE = "acquire"


# ------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Candidate:
    """One input image chosen for processing, with what is known before decoding it."""

    id: str
    source: str
    licence: str = ""
    ffhq_id: int | None = None
    note: str = ""
    pixel_md5: str | None = None  # FFHQ metadata: md5 of the decoded pixel array


@dataclass(frozen=True)
class Rejection:
    id: str
    source: str
    reason: str
    detail: str

    def row(self) -> tuple[str, ...]:
        return (self.id, self.source, STAGE, self.reason, self.detail)


@dataclass(frozen=True)
class Accepted:
    candidate: Candidate
    md5: str
    size: int
    width: int
    height: int
    note: str


Job = tuple[Candidate, bytes]
Item = Job | Rejection


@dataclass
class Selection:
    """What a source offers: jobs (in the source's own storage order), known count, receipt inputs."""

    items: Iterator[Item]
    total: int | None
    inputs: dict = field(default_factory=dict)
    description: str = ""



def reason_category(reason: str) -> str:
    """'truncated or corrupt: broken data stream' -> 'truncated or corrupt' (the rejects.csv reason)."""
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip() or reason
