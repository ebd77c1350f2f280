"""Where weights that are converted or provided by hand live: $DLFP_CACHE, else ~/.cache/dlfp (never committed).

Used by the dlib network's conversion cache, the ArcFace weights and the official GFP-GAN weights. Imports nothing
from dlfp.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "DLFP_CACHE"


def cache_dir() -> Path:
    """$DLFP_CACHE, else ~/.cache/dlfp: converted weights, never committed."""
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "dlfp"

