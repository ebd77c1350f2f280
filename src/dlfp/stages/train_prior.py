"""Stage `train_prior`: the StyleGAN2 facial prior (clean layout) trained from scratch on the train shards.

The training itself is dlfp.train.prior (networks, step, face measurement) run by dlfp.train.engine.run. With
`train_prior.official_weights` set, an official clean StyleGAN2 checkpoint is loaded strictly and written as
prior.pth instead of training.

Output (<out>): prior.pth ({'params_ema': generator EMA state_dict, 'config': constructor arguments},
weights_only-loadable), samples/step-NNNNNN.png (from step 0, the initialisation), losses.csv, losses_active.json,
receipt.json; with `train_prior.eval_samples` > 0 also prior_metrics.csv (face-detection rate and descriptor FD of
fixed samples at step 0 and every sample step) and prior_reference.json (the same measured on real train faces):
see dlfp.train.prior_metrics.
"""

from __future__ import annotations

from pathlib import Path

from dlfp.io.hashing import file_digest
from dlfp.io.receipt import write_receipt
from dlfp.params import Params
from dlfp.shards import streamed as streams
from dlfp.train.engine.distributed import is_main_process
from dlfp.train.engine.run import run_training, training_folder
from dlfp.train.prior import PRIOR_FILE, PriorTraining, convert_official

STAGE = "train_prior"


def run(params: Params, shards_dir: Path, out_dir: Path, *, stop_after: int | None = None) -> dict:
    """Train (or convert) the StyleGAN2 prior; writes <out>/prior.pth. See the module docstring."""
    p = params.train_prior
    shards_dir, out_dir = Path(shards_dir), Path(out_dir)
    params_hash = params.section_hash("seed", "train_prior")
    if p.official_weights:
        with training_folder(p, out_dir) as (work, _info):
            config = convert_official(p, work)
            write_receipt(work, stage=STAGE, params_hash=params_hash, seed=params.seed, counts={"steps": 0},
                          inputs={"official_weights": str(p.official_weights),
                                  "sha256": file_digest(p.official_weights)},
                          packages=("torch",), extra={"config": config})
        return {"out": str(out_dir), "mode": "official_weights", "config": config}

    def write_outputs(work: Path, summary: dict) -> None:
        write_receipt(work, stage=STAGE, params_hash=params_hash, seed=params.seed,
                      counts={"steps": summary["steps"], "train_samples": summary["train_samples"]},
                      inputs={"shards": str(shards_dir), "shards_index_sha256": streams.index_digest(shards_dir)},
                      packages=("torch", "webdataset"),
                      extra={"config": summary["config"], "provenance": summary["provenance"]})

    summary = run_training(PriorTraining(params, shards_dir), out_dir, stop_after=stop_after,
                           write_outputs=write_outputs)
    if is_main_process():
        print(f"{STAGE}: {summary['steps']} steps in {summary['seconds']} s -> {out_dir / PRIOR_FILE}")
    return summary
