"""Stage `train`: GFP-GAN (GFPGANv1Clean) on the StyleGAN2 prior, with the published losses.

The training itself is dlfp.train.gfpgan (networks, step, validation on the val pairs) run by dlfp.train.engine.run.

Output (<out>): gfpgan.pth ({'params_ema': ...}, the official format), gfpgan.json (constructor arguments and
input conventions), validation.csv, losses.csv, losses_active.json, samples/step-NNNNNN.png, receipt.json,
MODEL_CARD.md (a first model card: dlfp.report.model_card).
"""

from __future__ import annotations

import math
from pathlib import Path

from dlfp.io.hashing import file_digest
from dlfp.io.receipt import write_receipt
from dlfp.layout import CARD_NAME
from dlfp.params import Params
from dlfp.report.model_card import CardSources, write_card
from dlfp.shards import streamed as streams
from dlfp.shards.format import VAL_SPLIT
from dlfp.train.engine.distributed import is_main_process
from dlfp.train.engine.run import run_training
from dlfp.train.gfpgan import MODEL_FILE, GFPGANTraining

STAGE = "train"


def run(params: Params, shards_dir: Path, prior_path: Path, pairs_dir: Path, out_dir: Path, *,
        stop_after: int | None = None) -> dict:
    """Train GFP-GAN on the train shards from prior.pth; see the module docstring for the outputs."""
    p = params.train
    shards_dir, prior_path, pairs_dir, out_dir = map(Path, (shards_dir, prior_path, pairs_dir, out_dir))
    job = GFPGANTraining(params, shards_dir, prior_path, pairs_dir)

    def write_outputs(work: Path, summary: dict) -> None:
        write_receipt(work, stage=STAGE, params_hash=params.section_hash("seed", "degrade", "train"),
                      seed=params.seed, counts={"steps": summary["steps"], "train_samples": summary["train_samples"]},
                      inputs={"shards": str(shards_dir), "shards_index_sha256": streams.index_digest(shards_dir),
                              "prior": str(prior_path), "prior_sha256": file_digest(prior_path),
                              "pairs": str(pairs_dir)},
                      packages=("torch", "torchvision", "webdataset", "albumentations"),
                      extra={"config": summary["config"], "validation": summary["validation"],
                             "validation_pairs": {"split": VAL_SPLIT, "preset": p.val_preset,
                                                  "ids": summary["validation_ids"]},
                             "provenance": summary["provenance"]})
        # A first card beside the weights; evaluation and bias come with the report's complete card.
        write_card(work / CARD_NAME, CardSources(model_dir=work, data_size=params.data.size))

    summary = run_training(job, out_dir, stop_after=stop_after, write_outputs=write_outputs)
    if is_main_process():
        val = {k: float(v) for k, v in (summary["validation"] or {}).items()}
        nan = math.nan
        print(f"{STAGE}: {summary['steps']} steps in {summary['seconds']} s -> {out_dir / MODEL_FILE}; "
              f"{p.val_preset} pairs: PSNR {val.get('psnr', nan):.2f} dB (LQ {val.get('psnr_lq', nan):.2f}), "
              f"identity match {val.get('identity_match', nan):.3f} (LQ {val.get('identity_match_lq', nan):.3f})")
    return summary
