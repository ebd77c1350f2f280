"""The training loop: iteration, checkpoint schedule, SIGTERM/SIGINT handling, the non-finite check, the progress
bar and the losses log; plus the helpers a step function uses (learning-rate schedule, freezing networks).

A stage builds its networks and a `step(batch, step) -> {term: loss}` function, then hands them to `train_loop`
(usually through dlfp.train.engine.run.run_training). May import dlfp.train.engine.{checkpoint,distributed,logging}.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from dlfp.train.engine.checkpoint import checkpoint_path, save_checkpoint
from dlfp.train.engine.distributed import DistInfo, any_rank
from dlfp.train.engine.logging import LossLog

log = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    """A stop signal (or stop_after) ended the run after saving a checkpoint; rerun with resume to continue."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the last good checkpoint is left in place."""


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


def adam_with_lr_multipliers(named_parameters: Iterable[tuple[str, nn.Parameter]], lr: float,
                             multipliers: Mapping[str, float], betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam with one group per lr multiplier (e.g. StyleGAN2's equalised-lr scales of a clean-layout network);
    each group keeps its "lr_mul" so that set_lr scales it with the schedule. Frozen parameters are left out."""
    groups: dict[float, list[nn.Parameter]] = {}
    for name, parameter in named_parameters:
        if parameter.requires_grad:
            groups.setdefault(multipliers.get(name, 1.0), []).append(parameter)
    return torch.optim.Adam([{"params": params, "lr": lr * lr_mul, "lr_mul": lr_mul}
                             for lr_mul, params in groups.items()], lr=lr, betas=betas)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group to lr, times the group's own "lr_mul" where it has one (see adam_with_lr_multipliers)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mul", 1.0)


def requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)
