"""The one device resolver: a `device` parameter (auto, cpu or cuda) -> the torch device to run on.

Training, restoration and evaluation all ask here, so `auto` means the same everywhere and `cuda` on a machine
without CUDA fails with the same clear message, before any work starts. Imports torch only (lazily, so that
importing this module stays cheap).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(choice: str = "auto", index: int | None = None) -> torch.device:
    """cpu -> the CPU; cuda -> the GPU (refused when torch sees none); auto -> the GPU when there is one, else the CPU.

    `index` picks the GPU (a training rank passes its LOCAL_RANK); None leaves torch's current one ("cuda")."""
    import torch

    if choice not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}, got {choice!r}")
    if choice == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if choice == "cuda":
            raise RuntimeError("device: cuda was asked for, but torch sees no CUDA device")
        return torch.device("cpu")
    return torch.device("cuda", index) if index is not None else torch.device("cuda")
