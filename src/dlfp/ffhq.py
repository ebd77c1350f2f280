"""FFHQ facts shared by the data stages and the tests: its size and how an FFHQ id is read from a file name.

`ffhq_id` is recorded when the name is `ffhq<anything>_NNNNN` or a bare `NNNNN` (< 70000).
Imports only the standard library.
"""

from __future__ import annotations

import re

FFHQ_COUNT = 70_000
FFHQ_NAME = re.compile(r"^(?:ffhq[A-Za-z0-9]*_)?(\d{5})$", re.IGNORECASE)


def ffhq_id_from_name(identifier: str) -> int | None:
    match = FFHQ_NAME.match(identifier)
    if not match:
        return None
    value = int(match.group(1))
    return value if value < FFHQ_COUNT else None
