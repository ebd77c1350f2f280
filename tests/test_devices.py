"""dlfp.devices.resolve_device: the one answer to `device: auto|cpu|cuda` for training, restoration and evaluation."""

from __future__ import annotations

import pytest
import torch

from dlfp.devices import resolve_device


def test_cpu_is_the_cpu_even_where_cuda_is_there(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cpu", 1) == torch.device("cpu")


def test_auto_falls_back_to_the_cpu_but_cuda_is_refused_without_a_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("auto", 1) == torch.device("cpu")
    with pytest.raises(RuntimeError, match="device: cuda was asked for, but torch sees no CUDA device"):
        resolve_device("cuda")


def test_with_a_gpu_auto_and_cuda_pick_it_and_a_rank_gets_its_own(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda", 1) == torch.device("cuda:1")  # a torchrun rank: cuda:LOCAL_RANK


def test_an_unknown_choice_is_named() -> None:
    with pytest.raises(ValueError, match=r"device must be one of auto, cpu, cuda, got 'gpu'"):
        resolve_device("gpu")


def test_training_takes_its_device_from_the_same_resolver(monkeypatch) -> None:
    """init_distributed (one process) refuses `cuda` without CUDA before any work, as resolve_device does."""
    from dlfp.train.engine.distributed import init_distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert init_distributed("auto").device == torch.device("cpu")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        init_distributed("cuda")
