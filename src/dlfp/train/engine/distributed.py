"""Synchronous data parallel without DDP: process group, rank 0's weights everywhere, averaged gradients, per-rank
random streams; and the device a rank trains on (dlfp.devices.resolve_device, the one device resolver).

May import dlfp.devices and dlfp.io; nothing else of dlfp.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dlfp.devices import resolve_device
from dlfp.io.hashing import derive_seed

RNG_NAMESPACE = "train-rng"


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1



def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*), else one process.

    NCCL on GPUs, gloo on CPU. The device is dlfp.devices.resolve_device(device, LOCAL_RANK): cuda:LOCAL_RANK when
    CUDA is there (device "auto" or "cuda"), else the CPU; "cuda" without CUDA is refused."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    use_cuda = dev.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, dev)


def is_main_process() -> bool:
    """Rank 0 of the process group, or the only process: the one that writes and prints."""
    return not dist.is_initialized() or dist.get_rank() == 0


def broadcast_module(module: nn.Module, info: DistInfo) -> None:
    """Every rank starts from rank 0's parameters and buffers."""
    if info.distributed:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def average_gradients(params: Iterator[nn.Parameter] | list[nn.Parameter], info: DistInfo) -> None:
    """All-reduce the gradients of `params` (mean over ranks) in one flat bucket, before the optimiser step.

    Explicit all-reduce instead of wrapping in DistributedDataParallel: GAN steps run several forward passes
    per network (fake, real, R1 with a double backward) and freeze networks in turn, which DDP's reducer
    handles poorly; the arithmetic is the same (synchronous data parallel, gradients averaged)."""
    if not info.distributed:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def any_rank(flags: list[bool], info: DistInfo) -> list[bool]:
    """Logical OR of per-rank flags over all ranks (all ranks must stop at the same step)."""
    if not info.distributed:
        return flags
    tensor = torch.tensor([float(f) for f in flags], device=info.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def rank_seed(seed: int, rank: int) -> int:
    """Each rank draws different noise/latents, reproducibly."""
    return derive_seed(seed, RNG_NAMESPACE, rank)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
