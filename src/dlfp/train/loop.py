"""Shared training infrastructure: EMA, checkpoints and exact resume, stop signals, loss logs, data parallel.

A stage builds its networks and a `step(batch, step) -> {term: loss}` function, then hands them to
`train_loop`, which owns the iteration, the checkpoint schedule, SIGTERM/SIGINT handling, the non-finite check,
the progress bar and the logs. A checkpoint holds everything the next step depends on (models, EMA,
optimisers, step, torch/numpy/python RNG states, the data position), so on CPU a resumed run ends bit-identical
to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import json
import logging
import math
import os
import pickle
import random
import shutil
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from dlfp.io.atomic import PARTIAL_SUFFIX, atomic_path, csv_safe, output_lock, recover_swap, swap_into_place
from dlfp.io.hashing import derive_seed

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pth"
LOSSES_CSV = "losses.csv"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_FORMAT = 1
RNG_NAMESPACE = "train-rng"
RESUME_FORCE = "force"

# Keys of the train_prior / train sections left out of the resume provenance: changing them between an interruption
# and the resume cannot change the recipe (data, order, schedule, losses, networks) nor the validation figures in the
# receipt; threads and device can at most move float rounding.
# - threads: intra-op parallelism; like the device it may move float rounding, never the recipe;
# - workers: ShardStream deals samples to workers by position and the DataLoader collects them in that order, so
#   batches do not depend on the count (test_train.py resumes a workers=0 run with workers=2, bit-identically);
# - device: CPU and GPU round differently, but moving a run between them keeps its recipe (the device is recorded
#   in losses_active.json);
# - tensorboard, checkpoint_every, sample_every, keep_checkpoints, val_every: logging and saving cadence only
#   (sample grids and validation use fixed noise and draw nothing from the training RNG);
# - eval_samples: how many fixed prior samples the face measurement (dlfp.train.prior_metrics) scores; its latents
#   come from their own generator, so the count changes prior_metrics.csv only, never the weights;
# - resume: how this run starts, not what it trains.
# Everything else counts, iters included: a resume under another iters would end at another step than its
# checkpoint's recipe said.
RESULT_NEUTRAL_KEYS = frozenset({"threads", "workers", "device", "tensorboard", "checkpoint_every", "sample_every",
                                 "keep_checkpoints", "val_every", "resume", "eval_samples"})


class TrainingInterrupted(RuntimeError):
    """A stop signal (or stop_after) ended the run after saving a checkpoint; rerun with resume to continue."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the last good checkpoint is left in place."""


# ------------------------------------------------------------------------------------------------- EMA
def ema_decay(images_per_step: int, half_life_images: float, images_seen: int | None = None,
              rampup: float | None = None) -> float:
    """Per-step EMA decay with a half-life counted in training images: 0.5 ** (images_per_step / half_life).

    The published 0.5 ** (32 / 10000) is this with 32 images per step and a 10k-image half-life; counting in
    images keeps the averaging horizon when the batch (or the number of GPUs) changes. With `rampup` (StyleGAN2-ADA)
    the half-life is at most rampup * images_seen, so early on the average follows the network instead of
    remembering its random initialisation."""
    if rampup is not None and images_seen is not None:
        half_life_images = min(half_life_images, rampup * images_seen)
    if half_life_images <= 0:
        return 0.0
    return 0.5 ** (images_per_step / half_life_images)


class EMA:
    """Exponential moving average of a network's parameters (buffers are copied): the released generator."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        decay = self.decay if decay is None else decay
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)


# ------------------------------------------------------------------------------------------------- RNG
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict:
    """torch (CPU and CUDA), numpy and python RNG states as tensors and plain lists (weights_only-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value: object) -> object:
    return [_to_lists(v) for v in value] if isinstance(value, tuple | list) else value


def _to_tuples(value: object) -> object:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


# ------------------------------------------------------------------------------------------ distributed
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

    NCCL on GPUs, gloo on CPU. The device is cuda:LOCAL_RANK when CUDA is there (device "auto")."""
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, dev)


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


# ----------------------------------------------------------------------------------------------- signals
class StopSignal:
    """While active, SIGTERM and SIGINT set `requested` instead of killing the process: the loop saves a
    checkpoint at the end of the current step and exits cleanly. A second SIGINT interrupts at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        log.warning("%s received: saving a checkpoint after this step, then stopping", self.requested)

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------------------------- run folder
@contextlib.contextmanager
def run_folder(out_dir: Path | str, resume: bool) -> Iterator[Path]:
    """The stage's working folder `<out>.partial` (kept between runs for resume), renamed to `<out>` on success.

    Unlike staged_output, a failed or interrupted run leaves `.partial` in place: it holds the checkpoints.
    Without resume an old `.partial` is cleared first."""
    out_dir = Path(out_dir)
    with output_lock(out_dir):
        recover_swap(out_dir)
        partial = out_dir.with_name(out_dir.name + PARTIAL_SUFFIX)
        if partial.exists() and not resume:
            shutil.rmtree(partial)
        partial.mkdir(parents=True, exist_ok=True)
        yield partial
        swap_into_place(partial, out_dir)


@contextlib.contextmanager
def work_folder(out_dir: Path | str, resume: bool, info: DistInfo) -> Iterator[Path]:
    """Rank 0 owns the run folder (lock, clearing, final rename); other ranks only write their RNG files into it."""
    out_dir = Path(out_dir)
    if info.is_main:
        with run_folder(out_dir, resume) as work:
            yield work
    else:
        yield out_dir.with_name(out_dir.name + PARTIAL_SUFFIX)
    if info.distributed:
        dist.barrier()


def checkpoint_path(work_dir: Path) -> Path:
    return Path(work_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


def _rng_path(work_dir: Path, rank: int) -> Path:
    return Path(work_dir) / CHECKPOINT_DIR / f"rng-rank{rank}.pth"


def save_checkpoint(work_dir: Path, state: dict, step: int, data_state: dict, info: DistInfo,
                    provenance: dict | None = None) -> Path:
    """Atomically write the training state: per-rank RNG files first, then (rank 0) the main file (with the
    run's provenance: see training_provenance)."""
    path = checkpoint_path(work_dir)
    rng_path = _rng_path(work_dir, info.rank)
    with atomic_path(rng_path) as tmp:
        torch.save({"step": step, "rng": capture_rng()}, tmp)
    if info.distributed:
        dist.barrier()
    if info.is_main:
        payload = {"format": CHECKPOINT_FORMAT, "step": step, "data": data_state, "state": state,
                   "world_size": info.world_size}
        if provenance is not None:
            payload["provenance"] = provenance
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    if info.distributed:
        dist.barrier()
    return path


def check_resume_config(state: Mapping, config: Mapping) -> None:
    """A checkpoint of another architecture cannot be resumed: say so instead of failing inside load_state_dict."""
    saved = state.get("config")
    if saved is not None and dict(saved) != dict(config):
        raise RuntimeError(f"the checkpoint to resume was made with network config {dict(saved)}, the parameters now "
                           f"give {dict(config)}; set resume: false (or delete the .partial folder) to start afresh")


def flatten_params(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """Nested mapping -> {"dotted.key": value}; lists and scalars are values."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def result_params(section: str, values: Mapping) -> dict[str, object]:
    """A train_prior / train section as dotted keys, without the RESULT_NEUTRAL_KEYS."""
    return flatten_params({section: {k: v for k, v in values.items() if k not in RESULT_NEUTRAL_KEYS}})


def params_digest(flat: Mapping[str, object]) -> str:
    blob = json.dumps(dict(flat), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def training_provenance(flat: Mapping[str, object]) -> dict:
    """What a run is trained with: the hash of every result-relevant parameter and input digest, the flattened
    values themselves (so a resume can name the keys that changed), and the run's history of segments."""
    digest = params_digest(flat)
    return {"hash": digest, "params": dict(flat),
            "history": [{"from_step": 0, "hash": digest, "forced": False, "changed": []}]}


def changed_keys(saved: Mapping[str, object], current: Mapping[str, object]) -> list[str]:
    return sorted(k for k in set(saved) | set(current) if k not in saved or k not in current
                  or saved[k] != current[k])


def _describe(flat: Mapping[str, object], key: str) -> str:
    return json.dumps(flat[key]) if key in flat else "(absent)"


def resume_provenance(checkpoint: Mapping, current: dict, resume: bool | str, path: Path) -> dict:
    """The provenance to carry on after resuming `checkpoint`: the same run, or (resume: force) a run whose
    history records the change. Raises, naming every changed key, when the parameters differ without force."""
    saved = checkpoint.get("provenance")
    step = int(checkpoint["step"])
    if saved is not None and saved["hash"] == current["hash"]:
        return {**current, "history": list(saved["history"])}
    changed = changed_keys(saved["params"], current["params"]) if saved is not None else []
    if resume != RESUME_FORCE:
        if saved is None:
            reason = "records no training parameters (made before provenance was stored)"
        else:
            reason = "was trained with other parameters: " + "; ".join(
                f"{k}: {_describe(saved['params'], k)} -> {_describe(current['params'], k)}" for k in changed)
        raise RuntimeError(
            f"{path} (step {step}) {reason}. Resuming would mix two recipes in one model: set resume: false (or "
            f"delete the .partial folder) to start afresh, or resume: {RESUME_FORCE} to continue anyway (the receipt "
            "then records both hashes)")
    log.warning("resume: %s: continuing step %d under changed parameters (%s)", RESUME_FORCE, step,
                ", ".join(changed) or "the checkpoint recorded none")
    history = list(saved["history"]) if saved is not None else [
        {"from_step": 0, "hash": None, "forced": False, "changed": []}]
    history.append({"from_step": step, "hash": current["hash"], "forced": True, "changed": changed})
    return {**current, "history": history}


def resume_checkpoint(work_dir: Path, info: DistInfo, resume: bool | str,
                      provenance: dict) -> tuple[dict | None, dict]:
    """The checkpoint to continue from (None: start afresh) and the provenance the run carries on with."""
    checkpoint = load_checkpoint(work_dir, info) if resume else None
    if checkpoint is None:
        return None, provenance
    return checkpoint, resume_provenance(checkpoint, provenance, resume, checkpoint_path(work_dir))


def load_checkpoint(work_dir: Path, info: DistInfo) -> dict | None:
    """The last checkpoint (None if there is none); restores this rank's RNG states when they match its step."""
    path = checkpoint_path(work_dir)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise RuntimeError(f"{path}: refused to load (not a plain-tensor checkpoint; weights_only=True): "
                           f"{str(error).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise RuntimeError(f"{path}: unknown checkpoint format {found!r}")
    rng_path = _rng_path(work_dir, info.rank)
    rng = torch.load(rng_path, map_location="cpu", weights_only=True) if rng_path.is_file() else None
    if rng is not None and rng["step"] == payload["step"] and payload.get("world_size") == info.world_size:
        restore_rng(rng["rng"])
    else:
        log.warning("%s: no RNG state of rank %d for step %d; continuing with fresh random streams "
                    "(weights resume exactly, noise draws do not)", path, info.rank, payload["step"])
    return payload


# ----------------------------------------------------------------------------------------------- logging
class LossLog:
    """losses.csv (one row per step, for `dvc plots`) and TensorBoard scalars when tensorboard imports."""

    def __init__(self, work_dir: Path, columns: list[str], start_step: int, tensorboard: bool = True) -> None:
        self.path = Path(work_dir) / LOSSES_CSV
        self.columns = columns
        _truncate_csv(self.path, start_step)
        new_file = not self.path.exists()
        self._handle = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._writer = csv.writer(self._handle, lineterminator="\n")
        if new_file:
            self._writer.writerow(["step", *columns])
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(work_dir) / TENSORBOARD_DIR), purge_step=start_step + 1)
            except ImportError:
                log.info("tensorboard is not installed; losses go to %s only", self.path)

    def write(self, step: int, values: Mapping[str, float]) -> None:
        self._writer.writerow([step, *(_fmt(values.get(c)) for c in self.columns)])
        self._handle.flush()  # one short line per step: readers (dvc plots, tail -f) see it at once
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(f"loss/{name}", value, step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._tb is not None:
            self._tb.add_scalar(tag, value, step)

    def flush(self) -> None:
        self._handle.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self._handle.close()
        if self._tb is not None:
            self._tb.close()


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _truncate_csv(path: Path, last_step: int) -> None:
    """Drop rows after the checkpoint's step (a resumed run rewrites them)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = lines[:1] + [line for line in lines[1:] if line.split(",", 1)[0].isdigit()
                        and int(line.split(",", 1)[0]) <= last_step]
    path.write_text("".join(kept), encoding="utf-8")


def append_csv_row(path: Path, header: list[str], row: list[object]) -> None:
    """Append one row (writing the header first for a new file), e.g. validation.csv."""
    new_file = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        if new_file:
            writer.writerow(header)
        writer.writerow([csv_safe(cell) for cell in row])


# ------------------------------------------------------------------------------------------------ the loop
def check_finite(values: Mapping[str, float], step: int) -> None:
    bad = [name for name, value in values.items() if not math.isfinite(value)]
    if bad:
        raise NonFiniteLossError(
            f"non-finite loss at step {step}: {', '.join(f'{n}={values[n]}' for n in bad)}; stopped without "
            "saving this step, the last good checkpoint is kept (lower the learning rate or disable bf16)")


@dataclass
class LoopConfig:
    total_steps: int
    checkpoint_every: int
    start_step: int = 0
    stop_after: int | None = None  # save and stop after this step, as if a signal had come (tests, time limits)
    provenance: dict | None = None  # stored in every checkpoint (training_provenance / resume_provenance)
    progress: bool = True
    desc: str = "train"


def train_loop(
    step_fn: Callable[[dict, int], dict[str, Tensor]],
    batches: Iterator[dict],
    state_fn: Callable[[], dict],
    work_dir: Path,
    config: LoopConfig,
    info: DistInfo,
    loss_log: LossLog | None,
    on_step_end: Callable[[int], None] | None = None,
) -> int:
    """Run steps start_step + 1 .. total_steps; returns the last step. Raises TrainingInterrupted after saving
    on a stop request, NonFiniteLossError (without saving) on a NaN/inf term."""
    step = config.start_step
    data_state = getattr(batches, "state", lambda: {})
    saved_at = step
    progress = tqdm(total=config.total_steps, initial=step, desc=config.desc, unit="step",
                    disable=not (config.progress and info.is_main), dynamic_ncols=True)
    try:
        with StopSignal() as stop:
            while step < config.total_steps:
                batch = next(batches)
                step += 1
                losses = step_fn(batch, step)
                values = {name: float(value) for name, value in losses.items()}
                nonfinite = not all(math.isfinite(v) for v in values.values())
                stop_now = stop.requested is not None or step == config.stop_after
                nonfinite, stop_now = any_rank([nonfinite, stop_now], info)
                if nonfinite:
                    check_finite(values, step)
                    raise NonFiniteLossError(f"non-finite loss on another rank at step {step}; stopped, the "
                                             "last good checkpoint is kept")
                if loss_log is not None and info.is_main:
                    loss_log.write(step, values)
                progress.update()
                if info.is_main and values:
                    progress.set_postfix({k: f"{v:.3g}" for k, v in list(values.items())[:3]}, refresh=False)
                if step % config.checkpoint_every == 0 or step == config.total_steps or stop_now:
                    if loss_log is not None and info.is_main:
                        loss_log.flush()
                    save_checkpoint(work_dir, state_fn(), step, data_state(), info, config.provenance)
                    saved_at = step
                if on_step_end is not None:
                    on_step_end(step)
                if stop_now and step < config.total_steps:
                    reason = stop.requested or f"stop_after={config.stop_after}"
                    raise TrainingInterrupted(
                        f"stopped by {reason} at step {step}; checkpoint saved to {checkpoint_path(work_dir)}; "
                        "run again with resume: true to continue", step)
    finally:
        progress.close()
        if loss_log is not None:
            loss_log.flush()
    assert saved_at == step
    return step


# ------------------------------------------------------------------------------------------------ helpers
def lr_at(step: int, base_lr: float, milestones: list[int], gamma: float) -> float:
    """Step schedule: base_lr * gamma ** (number of milestones already reached). Stateless, so resume-safe."""
    return base_lr * gamma ** sum(1 for m in milestones if step > m)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group to lr, times the group's own "lr_mul" where it has one (see dlfp.train.prior.generator_adam)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mul", 1.0)


def resolve_device(choice: str, info: DistInfo) -> torch.device:
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for, but torch sees no CUDA device")
    return info.device


@torch.no_grad()
def save_image_grid(path: Path, rows: list[Tensor]) -> None:
    """Rows of (N, 3, S, S) images in [-1, 1] -> one PNG (rows stacked vertically), written atomically."""
    from dlfp.io.atomic import write_bytes_atomic
    from dlfp.io.images import encode_png

    size = max(r.shape[-1] for r in rows)
    rows = [torch.nn.functional.interpolate(r.float().cpu(), size=(size, size), mode="nearest")
            if r.shape[-1] != size else r.float().cpu() for r in rows]
    grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)  # (3, rows*S, N*S)
    image = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    write_bytes_atomic(path, encode_png(image))


def requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)
