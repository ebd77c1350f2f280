"""Checkpoints and exact resume: the run's working folder, the training state with every RNG, and the provenance
check that refuses to continue a checkpoint under another recipe.

A checkpoint holds everything the next step depends on (models, EMA, optimisers, step, torch/numpy/python RNG
states, the data position), so on CPU a resumed run ends bit-identical to an uninterrupted one.
May import dlfp.io and dlfp.train.engine.distributed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pickle
import random
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from dlfp.io.atomic import PARTIAL_SUFFIX, output_lock, recover_swap, swap_into_place
from dlfp.models.checkpoints import save_torch
from dlfp.train.engine.distributed import DistInfo

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pth"
CHECKPOINT_FORMAT = 1
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


# ------------------------------------------------------------------------------------------------- RNG
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
    save_torch({"step": step, "rng": capture_rng()}, rng_path)
    if info.distributed:
        dist.barrier()
    if info.is_main:
        payload = {"format": CHECKPOINT_FORMAT, "step": step, "data": data_state, "state": state,
                   "world_size": info.world_size}
        if provenance is not None:
            payload["provenance"] = provenance
        save_torch(payload, path)
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
