"""One training run, as train_prior and train both do it: `run_training(job, out_dir)`.

The skeleton is the same for every network: torch threads, distributed init and the device, the locked working
folder `<out>.partial` (kept for resume), resume from its checkpoint under the provenance check (or seeding the
per-rank random streams), the train-shard stream from the data position, the losses log, `train_loop`, the final
save, cleaning up the checkpoints and renaming the folder into place. What differs is a `TrainingJob`: it builds the
trainer (networks, optimisers, `step`), names what the result depends on, says how samples are made, prepares its
own logs (validation, sample grids) and saves the final weights. The stage writes its receipt with `write_outputs`.

May import dlfp.train.engine.*, dlfp.train.data and dlfp.io; never a stage nor a particular network's module.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from torch import Tensor

from dlfp.params import OptimParams
from dlfp.train.data import Batches, SampleRecipe, ShardStream, train_records
from dlfp.train.engine.checkpoint import CHECKPOINT_DIR, resume_checkpoint, training_provenance, work_folder
from dlfp.train.engine.distributed import DistInfo, init_distributed, rank_seed, seed_everything
from dlfp.train.engine.logging import LossLog
from dlfp.train.engine.loop import LoopConfig, train_loop

log = logging.getLogger(__name__)


class Trainer(Protocol):
    """Networks, optimisers and one step; `state_dict` is everything a checkpoint needs to continue."""

    config: dict

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def step(self, batch: dict, step: int) -> dict[str, Tensor]: ...


class TrainingJob(ABC):
    """The network-specific parts of a run; `run_training` calls the hooks in the order they are listed here."""

    stage: str  # the stage name: progress bar and log lines
    section: OptimParams  # the stage's params section (iters, batch, resume, device, logging cadence...)
    seed: int
    shards_dir: Path
    loss_columns: Sequence[str]  # the columns of losses.csv

    @abstractmethod
    def build(self, info: DistInfo) -> Trainer:
        """The trainer with its initial weights (identical on every rank)."""

    @abstractmethod
    def provenance_params(self, trainer: Trainer) -> dict[str, object]:
        """Everything the result depends on, as dotted keys (see checkpoint.RESULT_NEUTRAL_KEYS)."""

    @abstractmethod
    def sample_recipe(self, trainer: Trainer) -> SampleRecipe:
        """How a training sample is made from a train-shard record."""

    def start(self, trainer: Trainer, work: Path, info: DistInfo, start_step: int, records: list[dict],
              loss_log: LossLog | None) -> Callable[[int], None] | None:
        """Before the first step, on every rank: the job's own logs; returns what to do after each step."""
        return None

    @abstractmethod
    def save(self, trainer: Trainer, work: Path) -> None:
        """Main rank, after the last step: the final weights and what goes beside them."""

    def summary(self) -> dict:
        """The job's additions to the summary run_training returns (every rank)."""
        return {}


@contextlib.contextmanager
def training_folder(section: OptimParams, out_dir: Path) -> Iterator[tuple[Path, DistInfo]]:
    """(working folder, this process's DistInfo): torch threads and the process group set up, the folder locked by
    rank 0 and renamed to `out_dir` when the block ends without an error."""
    torch.set_num_threads(section.threads)
    info = init_distributed(section.device)
    with work_folder(out_dir, section.resume, info) as work:
        yield work, info


def run_training(job: TrainingJob, out_dir: Path, *, stop_after: int | None = None,
                 write_outputs: Callable[[Path, dict], None] | None = None) -> dict:
    """Train `job` into `out_dir`; `write_outputs(work, summary)` (main rank) adds the stage's files, e.g. the receipt,
    before the folder is renamed into place. Returns the summary (steps, train_samples, config, the job's summary,
    provenance, out, seconds). Raises TrainingInterrupted after a stop request (the checkpoint is saved)."""
    started = time.monotonic()
    with training_folder(job.section, out_dir) as (work, info):
        summary = _train(job, work, info, stop_after)
        if info.is_main and write_outputs is not None:
            write_outputs(work, summary)
    summary.update(out=str(out_dir), seconds=round(time.monotonic() - started, 1))
    return summary


def _train(job: TrainingJob, work: Path, info: DistInfo, stop_after: int | None) -> dict:
    p = job.section
    if info.distributed:
        dist.barrier()  # rank 0 has created (or cleared) the working folder
    trainer = job.build(info)
    checkpoint, provenance = resume_checkpoint(work, info, p.resume,
                                               training_provenance(job.provenance_params(trainer)))
    start_step, data_state = 0, {"epoch": 0, "offset": 0}
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint["state"])
        start_step, data_state = checkpoint["step"], checkpoint["data"]
        log.info("%s: resuming at step %d", job.stage, start_step)
    else:
        seed_everything(rank_seed(job.seed, info.rank))
    records = train_records(job.shards_dir)
    stream = ShardStream(job.shards_dir, records, job.sample_recipe(trainer), rank=info.rank,
                         world_size=info.world_size, start_epoch=data_state["epoch"],
                         start_offset=data_state["offset"], shuffle_buffer=p.shuffle_buffer)
    batches = Batches(stream, p.batch_size, p.workers)
    loss_log = LossLog(work, list(job.loss_columns), start_step, p.tensorboard) if info.is_main else None
    config = LoopConfig(total_steps=p.iters, checkpoint_every=p.checkpoint_every, start_step=start_step,
                        stop_after=stop_after, desc=job.stage, provenance=provenance)
    try:
        on_step_end = job.start(trainer, work, info, start_step, records, loss_log)
        last = train_loop(trainer.step, batches, trainer.state_dict, work, config, info, loss_log, on_step_end)
    finally:
        if loss_log is not None:
            loss_log.close()
    if info.is_main:
        job.save(trainer, work)
        if not p.keep_checkpoints:
            shutil.rmtree(work / CHECKPOINT_DIR, ignore_errors=True)
    return {"steps": last, "train_samples": stream.samples_per_epoch(), "config": trainer.config, **job.summary(),
            "provenance": {"hash": provenance["hash"], "history": provenance["history"]}}
