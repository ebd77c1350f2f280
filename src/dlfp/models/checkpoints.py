"""Official-format checkpoints: `{'params_ema': state_dict}` (fallback `'params'`), loaded strictly.

Loading never unpickles code (torch.load(weights_only=True)); a file that does not fit the model fails with
one message naming the file and listing missing keys, unexpected keys and shape mismatches.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from dlfp.io.atomic import atomic_path

STATE_KEYS = ("params_ema", "params")  # preferred first: the EMA generator is the released one
MAX_LISTED = 20  # keys listed per category in error messages

OFFICIAL_WEIGHTS = {
    "GFPGANv1.3.pth": "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.3.pth",
    "GFPGANv1.4.pth": "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.4/GFPGANv1.4.pth",
    "GFPGANCleanv1-NoCE-C2.pth":
        "https://github.com/TencentARC/GFPGAN/releases/download/v0.2.0/GFPGANCleanv1-NoCE-C2.pth",
}


class WeightsMissingError(FileNotFoundError):
    """The weights file is not on disk (dl-fp never downloads at run time)."""


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's keys or shapes do not match the model."""


def _where_to_get(path: Path) -> str:
    url = OFFICIAL_WEIGHTS.get(path.name)
    source = f" (published at {url})" if url else ""
    return (f"{path}: weights file not found. Place the file{source} at exactly this path "
            f"(or pass another path); dl-fp does not download weights at run time.")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of an official checkpoint: 'params_ema', else 'params', else a bare state_dict."""
    path = Path(path)
    if not path.is_file():
        raise WeightsMissingError(_where_to_get(path))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not a weights file"
        raise CheckpointMismatchError(f"{path}: not a loadable weights file ({type(error).__name__}: {error})"
                                      ) from error
    if not isinstance(payload, Mapping):
        raise CheckpointMismatchError(f"{path}: expected a dict of tensors, got {type(payload).__name__}")
    for key in STATE_KEYS:
        if key in payload and isinstance(payload[key], Mapping):
            return dict(payload[key])
    if payload and all(isinstance(v, Tensor) for v in payload.values()):
        return dict(payload)  # a bare state_dict
    raise CheckpointMismatchError(f"{path}: no 'params_ema' or 'params' entry; top-level keys: "
                                  f"{sorted(map(str, payload))[:MAX_LISTED]}")


def _listing(title: str, items: list[str]) -> str:
    more = f" ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"\n  {title} ({len(items)}): " + ", ".join(items[:MAX_LISTED]) + more


def check_state_dict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Raise CheckpointMismatchError listing missing, unexpected and mis-shaped keys (strict loading)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: file {list(state[k].shape)} vs model {list(v.shape)}"
                  for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        message = f"{source}: checkpoint does not fit {type(model).__name__}"
        if missing:
            message += _listing("missing keys", missing)
        if unexpected:
            message += _listing("unexpected keys", unexpected)
        if mismatched:
            message += _listing("shape mismatches", mismatched)
        raise CheckpointMismatchError(message)


def load_into(model: nn.Module, path: str | Path) -> nn.Module:
    """Strictly load an official-format checkpoint into `model` (in place); returns the model."""
    state = read_state_dict(path)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model


def save_torch(obj: object, path: str | Path) -> Path:
    """torch.save, atomic and byte-reproducible: the same tensors and values give the same file bytes.

    Given a path, torch.save names the zip archive's root folder after the file, here atomic_path's random
    temporary name, so every save differed. Given an open file it writes the fixed name "archive" (as for an
    in-memory buffer) and still streams to disk, without a second copy of the checkpoint in memory."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as stream:
        torch.save(obj, stream)
    return path


def save_official(model: nn.Module, path: str | Path, key: str = "params_ema") -> Path:
    """Write `{key: state_dict}` atomically, loadable by load_into and by the official GFPGAN code."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save_torch({key: state}, path)
