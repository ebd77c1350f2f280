"""File and seed hashing in one place."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def file_digest(path: Path | str, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (global seed, sample id, preset, epoch ...), stable across processes.

    Python's hash() is salted per process; this is not, so worker count and order never change a sample.
    """
    blob = "\x1f".join(str(part) for part in parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "big") >> 1
