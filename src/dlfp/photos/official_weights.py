"""The official GFP-GAN release weights by name (`--weights gfpgan-v1.4`): fetched once into $DLFP_CACHE/weights.

The file comes from the official GitHub release URL (or `$DLFP_WEIGHTS_URL/<file name>`, a mirror or a test
server) through the acquire stage's download code (`dlfp.io.download`: `.part` file resumed with HTTP Range,
retries with backoff, progress bar, atomic rename). A short probe first makes an offline machine fail at once
with the URL to fetch by hand and the folder to put the file in. The file is then checked structurally against
the release layout (GFPGANv1Clean at 512 px, num_style_feat 512, channel_multiplier 2, narrow 1: the keys and
shapes of ../shared/reference/state_dicts/gfpganv1clean_512.json, which tests/test_models.py pins our release
model to), loaded with `weights_only=True`. A file with the wrong layout is moved aside as `<file>.bad`, never
kept as the cached copy. Its sha256 is recorded and compared with the release file's sha256.

The release page publishes no checksums. RELEASE_SHA256 holds the digests that independent projects pin for
these exact release assets (348,632,874 bytes each); a file that differs, e.g. from a mirror, is still used when
its layout is right, with the mismatch logged and recorded in the summary.

Here, not in models/: what lives here is fetching a release file by name for `dlfp restore` (URL, cache folder,
download, offline message); the model-format checks it calls are models/ code (checkpoints, gfpgan.release_model).
Imports dlfp.models and the download code, never a stage.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from dlfp.photos.defaults import OFFICIAL_NAMES

log = logging.getLogger(__name__)

URL_ENV = "DLFP_WEIGHTS_URL"  # base URL replacing the release's, e.g. a mirror; the file name is appended
PROBE_TIMEOUT_S = 10.0
RELEASE_SHA256 = {
    "GFPGANv1.3.pth": "c953a88f2727c85c3d9ae72e2bd4846bbaf59fe6972ad94130e23e7017524a70",
    "GFPGANv1.4.pth": "e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad",
}


class OfficialWeightsError(RuntimeError):
    """The named weights could not be fetched or are not the release layout; the message says what to do."""


@dataclass(frozen=True)
class OfficialWeights:
    name: str            # e.g. gfpgan-v1.4
    path: Path           # $DLFP_CACHE/weights/GFPGANv1.4.pth
    url: str             # where it came from (or would have)
    sha256: str
    release_sha256: str
    downloaded: bool     # False: the cached copy was used

    @property
    def matches_release(self) -> bool:
        return self.sha256 == self.release_sha256

    def record(self) -> dict[str, object]:
        """What the summary records about the weights."""
        return {"name": self.name, "file": str(self.path), "url": self.url, "sha256": self.sha256,
                "release_sha256": self.release_sha256, "matches_release": self.matches_release,
                "downloaded_now": self.downloaded}


def is_official_name(weights: object) -> bool:
    return isinstance(weights, str) and weights in OFFICIAL_NAMES


def weights_folder() -> Path:
    """$DLFP_CACHE/weights (else ~/.cache/dlfp/weights), where the identity weights live too."""
    from dlfp.models.weights_cache import cache_dir

    return cache_dir() / "weights"


def weights_url(file_name: str) -> str:
    """The official release URL, or `$DLFP_WEIGHTS_URL/<file name>` when that is set."""
    from dlfp.models.checkpoints import OFFICIAL_WEIGHTS

    base = os.environ.get(URL_ENV, "").strip()
    return f"{base.rstrip('/')}/{file_name}" if base else OFFICIAL_WEIGHTS[file_name]


def sha256_of(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def check_release_layout(path: Path) -> None:
    """Strict structural check: every key and shape of the release GFPGANv1Clean, nothing else (weights_only)."""
    import torch

    from dlfp.models.checkpoints import check_state_dict, read_state_dict
    from dlfp.models.gfpgan import release_model

    state = read_state_dict(path)
    with torch.device("meta"):  # shapes only: no 86 M parameters allocated or initialised
        model = release_model()
    check_state_dict(model, state, str(path))


def fetch(name: str, *, progress: bool = True) -> OfficialWeights:
    """The named release file in the cache: downloaded when absent, checked, hashed."""
    from dlfp.io.download import DownloadError, download, probe_size
    from dlfp.models.checkpoints import CheckpointMismatchError

    file_name = OFFICIAL_NAMES[name]
    folder = weights_folder()
    path, url = folder / file_name, weights_url(file_name)
    by_hand = (f"fetch {url} by hand (browser, curl -L -o {file_name} ...) and put it in {folder}/ as {file_name}"
               f" (the folder is $DLFP_CACHE/weights; set {URL_ENV} to download from a mirror)")
    downloaded = not path.is_file()
    if downloaded:
        try:
            probe_size(url, timeout_s=PROBE_TIMEOUT_S)  # offline: fail now, not after the retries' backoff
            download(url, path, progress=progress)
        except DownloadError as error:
            raise OfficialWeightsError(f"--weights {name}: cannot download {url}: {error}. Offline? Then "
                                       f"{by_hand}.") from None
    try:
        check_release_layout(path)
    except CheckpointMismatchError as error:
        bad = path.with_name(path.name + ".bad")
        os.replace(path, bad)
        raise OfficialWeightsError(f"--weights {name}: {error}\nThe file is not the official {file_name}; moved "
                                   f"to {bad}. Fetch {url} again, or {by_hand}.") from None
    weights = OfficialWeights(name, path, url, sha256_of(path), RELEASE_SHA256[file_name], downloaded)
    if not weights.matches_release:
        log.warning("%s: sha256 %s differs from the official release file's %s (the layout is the release's; a "
                    "mirror or a re-saved file?)", path, weights.sha256, weights.release_sha256)
    return weights
