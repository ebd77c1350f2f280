"""Training: data determinism and flips, a learning step, exact resume, SIGTERM, NaN stop, data parallel (gloo).

Everything runs on tiny networks (64 px, narrow widths) over synthetic shards written with the project's own
shard writer, so the tests need neither the shared faces nor model weights.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from dlfp.degradation import degrade, sample_seed
from dlfp.io.atomic import write_json_atomic
from dlfp.io.images import encode_png
from dlfp.params import DegradationParams, ParamsError, parse_params
from dlfp.shards.format import ShardSetWriter, json_bytes
from dlfp.stages import train as train_stage
from dlfp.stages import train_prior as prior_stage
from dlfp.train import data as train_data
from dlfp.train import gfpgan, prior, prior_metrics
from dlfp.train.data import Batches, SampleRecipe, ShardStream, make_sample, train_records
from dlfp.train.engine.checkpoint import checkpoint_path
from dlfp.train.engine.distributed import DistInfo
from dlfp.train.engine.ema import EMA, ema_decay
from dlfp.train.engine.loop import NonFiniteLossError, TrainingInterrupted

torch.set_num_threads(1)

SIZE = 64
TRAIN_COUNT = 12
PAIR_COUNT = 4
TINY_NET = dict(out_size=SIZE, num_style_feat=32, num_mlp=1, channel_multiplier=1, narrow=0.0625)
BOXES = {"left_eye": [20.0, 26.0, 6.0], "right_eye": [43.0, 26.0, 6.0], "mouth": [32.0, 46.0, 8.0]}
QUIET = dict(workers=0, tensorboard=False, threads=1, batch_size=2, shuffle_buffer=4)


def _face(rng: np.random.Generator) -> np.ndarray:
    """A smooth synthetic image (uint8 64x64x3): coarse random colours, upsampled, plus a dark 'eye' band."""
    import cv2

    coarse = rng.integers(40, 220, size=(8, 8, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    image[22:30, 14:50] //= 3
    return image


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train_data")
    rng = np.random.default_rng(0)
    shards, pairs = root / "shards", root / "pairs"
    writer = ShardSetWriter(shards, "train/clean-{:06d}.tar", samples_per_shard=TRAIN_COUNT // 2)
    for i in range(TRAIN_COUNT):
        key = f"face{i:03d}"
        meta = {"id": key, "boxes": {k: [v[0] + i % 3, v[1], v[2]] for k, v in BOXES.items()}, "split": "train"}
        writer.write({"__key__": key, "gt.png": encode_png(_face(rng)), "json": json_bytes(meta)})
    records = [r.__dict__ for r in writer.close()]
    write_json_atomic(shards / "index.json", {"splits": {"train": {"count": TRAIN_COUNT, "shards": records}}})
    preset = DegradationParams(blur_sigma=(1.0, 3.0), downscale=(2.0, 3.0), noise_sigma=(5.0, 10.0),
                               jpeg_quality=(70, 90), color_shift_prob=0, gray_prob=0, jitter_prob=0)
    writer = ShardSetWriter(pairs, "val/moderate/pairs-{:06d}.tar", samples_per_shard=100)
    for i in range(PAIR_COUNT):
        key, gt = f"val{i:03d}", _face(rng)
        lq, _ = degrade(gt, preset, sample_seed(1, key, "moderate"))
        writer.write({"__key__": key, "lq.png": encode_png(lq), "gt.png": encode_png(gt),
                      "json": json_bytes({"id": key, "split": "val"})})
    records = [r.__dict__ for r in writer.close()]
    write_json_atomic(pairs / "index.json",
                      {"splits": {"val": {"presets": {"moderate": {"count": PAIR_COUNT, "shards": records}}}}})
    return {"shards": shards, "pairs": pairs, "root": root}


def make_params(train_prior: dict | None = None, train: dict | None = None):
    raw = {"seed": 7, "data": {"source": "folder", "folder": "unused", "size": SIZE},
           "degrade": {"presets": {"paper": {}, "moderate": {"blur_sigma": [1.0, 3.0]}}},
           "train_prior": {**TINY_NET, **QUIET, "iters": 4, "checkpoint_every": 100, "sample_every": 100,
                           "eval_samples": 8, **(train_prior or {})},
           "train": {**QUIET, "iters": 4, "checkpoint_every": 100, "sample_every": 100, "val_every": 100,
                     "perceptual_network": "off", "identity_network": "off", "r1_interval": 2,
                     **(train or {})}}
    return parse_params(raw)


@pytest.fixture(scope="module")
def prior_file(data: dict[str, Path]) -> Path:
    """A tiny prior (2 training steps) shared by the GFP-GAN tests."""
    out = data["root"] / "prior"
    prior_stage.run(make_params({"iters": 2}), data["shards"], out)
    return out / prior.PRIOR_FILE


def _raw_samples(data: dict[str, Path]) -> list[tuple[bytes, dict]]:
    from dlfp.shards.local import iter_samples

    records = train_records(data["shards"])
    return [(s["gt.png"], json.loads(s["json"])) for s in iter_samples(data["shards"], records)]


# ------------------------------------------------------------------------------------------------- data
def test_flip_mirrors_boxes_is_deterministic_and_leaves_meta_alone(data: dict[str, Path]) -> None:
    gt_png, meta = _raw_samples(data)[0]
    frozen = json.dumps(meta, sort_keys=True)
    recipe = SampleRecipe(seed=3, out_size=32, preset=DegradationParams())
    samples = {epoch: make_sample(gt_png, meta, epoch, recipe) for epoch in range(8)}
    again = make_sample(gt_png, meta, 5, recipe)
    assert torch.equal(again["gt"], samples[5]["gt"]) and torch.equal(again["lq"], samples[5]["lq"])
    assert json.dumps(meta, sort_keys=True) == frozen  # cached meta untouched
    plain = make_sample(gt_png, meta, 0, SampleRecipe(seed=3, out_size=32, flip_prob=0.0))
    flipped = [e for e, s in samples.items() if not torch.equal(s["gt"], plain["gt"])]
    assert 0 < len(flipped) < 8  # some epochs flip, some do not
    s = samples[flipped[0]]
    assert torch.equal(s["gt"], plain["gt"].flip(-1))
    scale = 32 / SIZE
    left, right = meta["boxes"]["left_eye"], meta["boxes"]["right_eye"]
    # the flipped image's left eye is the mirrored right eye, in pixel-index coordinates at 32 px
    assert s["boxes"][0].tolist() == pytest.approx([(SIZE - 1 - right[0] + 0.5) * scale - 0.5,
                                                    (right[1] + 0.5) * scale - 0.5, right[2] * scale])
    assert plain["boxes"][0].tolist() == pytest.approx([(left[0] + 0.5) * scale - 0.5,
                                                        (left[1] + 0.5) * scale - 0.5, left[2] * scale])


def test_a_preset_mixture_draws_each_preset_from_the_seed_id_and_epoch(data: dict[str, Path]) -> None:
    """Every sample of a mixture is degraded by exactly one of its presets, chosen from (seed, id, epoch) alone."""
    gt_png, meta = _raw_samples(data)[0]
    light = DegradationParams(blur_sigma=(0.1, 0.2), downscale=(1.0, 1.0), noise_sigma=(0.0, 0.0),
                              jpeg_quality=(100, 100), color_shift_prob=0, gray_prob=0, jitter_prob=0)
    heavy = DegradationParams(blur_sigma=(6.0, 8.0), downscale=(4.0, 6.0), noise_sigma=(15.0, 20.0),
                              jpeg_quality=(60, 70), color_shift_prob=0, gray_prob=0, jitter_prob=0)
    mixed = SampleRecipe(seed=3, out_size=32, preset=(light, heavy), flip_prob=0.0)
    chosen = []
    for epoch in range(12):
        sample = make_sample(gt_png, meta, epoch, mixed)
        alone = [make_sample(gt_png, meta, epoch, SampleRecipe(seed=3, out_size=32, preset=p, flip_prob=0.0))
                 for p in (light, heavy)]
        matches = [i for i, other in enumerate(alone) if torch.equal(sample["lq"], other["lq"])]
        assert len(matches) == 1  # exactly one preset made this LQ, with the sample's own degradation seed
        assert matches[0] == train_data.preset_choice(3, meta["id"], epoch, 2)
        chosen.append(matches[0])
    assert set(chosen) == {0, 1}  # both presets are drawn over the epochs


def test_train_preset_mixture_is_validated_against_the_degrade_presets(data: dict[str, Path]) -> None:
    params = make_params(train={"preset": ["paper", "moderate"]})
    assert params.train.presets == ["paper", "moderate"]
    assert make_params(train={"preset": "moderate"}).train.presets == ["moderate"]
    for bad, message in (([], "at least one preset"), (["paper", "paper"], "each once")):
        with pytest.raises(ParamsError, match=message):
            make_params(train={"preset": bad})
    unknown = make_params(train={"preset": ["paper", "nope"]})  # other stages may run with fewer presets
    with pytest.raises(ValueError, match="'nope' is not a degrade preset"):
        gfpgan.GFPGANTraining(unknown, data["shards"], data["root"] / "prior.pth", data["pairs"])


def test_random_decoder_init_ignores_the_prior_weights(data: dict[str, Path], prior_file: Path) -> None:
    """decoder_init random (the prior ablation): same architecture, the seed's initialisation, not the prior."""
    state, cfg = prior.load_prior(prior_file)
    built = {init: gfpgan.GFPGANTrainer(make_params(train={"decoder_init": init}).train, state, cfg, 7, DistInfo(),
                                        torch.device("cpu"), None, None).net_g for init in ("prior", "random")}
    key = "constant_input.weight"
    assert torch.equal(built["prior"].stylegan_decoder.state_dict()[key], state[key])
    assert not torch.equal(built["random"].stylegan_decoder.state_dict()[key], state[key])
    again = gfpgan.GFPGANTrainer(make_params(train={"decoder_init": "random"}).train, state, cfg, 7, DistInfo(),
                                 torch.device("cpu"), None, None).net_g
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), built["random"].state_dict().values(),
                                                  strict=True))  # the seed alone fixes the random decoder
    assert torch.equal(built["prior"].conv_body_first.weight, built["random"].conv_body_first.weight)


def _keys(stream: ShardStream, count: int) -> list[tuple[int, int, str]]:
    out = []
    for epoch, index, sample in stream:
        out.append((epoch, index, sample["key"]))
        if len(out) == count:
            return out
    return out


def test_stream_order_is_seeded_resumable_and_split_equally(data: dict[str, Path]) -> None:
    records = train_records(data["shards"])
    recipe = SampleRecipe(seed=3, out_size=32)
    full = _keys(ShardStream(data["shards"], records, recipe, shuffle_buffer=4), 30)
    assert full == _keys(ShardStream(data["shards"], records, recipe, shuffle_buffer=4), 30)
    epoch0 = [k for e, _, k in full if e == 0]
    assert sorted(epoch0) == sorted({k for _, _, k in full})  # every sample once per epoch
    assert [k for e, _, k in full if e == 1] != epoch0  # reshuffled per epoch
    resumed = _keys(ShardStream(data["shards"], records, recipe, shuffle_buffer=4, start_epoch=0,
                                start_offset=7), 23)
    assert resumed == full[7:]
    for one_shard in (False, True):  # shard-level split (2 shards) and sample-level split (1 shard)
        recs = records[:1] if one_shard else records
        ranks = [[k for e, _, k in _keys(ShardStream(data["shards"], recs, recipe, rank=r, world_size=2), 200)
                  if e == 0] for r in range(2)]
        assert len(ranks[0]) == len(ranks[1]) > 0
        assert not set(ranks[0]) & set(ranks[1])


def test_sample_grid_lays_rows_out_top_to_bottom_without_padding(tmp_path: Path) -> None:
    """save_image_grid: row r, column c of the PNG is image c of row r (a smaller row scaled up, nearest), 8-bit
    ((x + 1) * 127.5, rounded); what the prior's and GFP-GAN's samples/step-NNNNNN.png show."""
    from dlfp.io.images import decode_png_bytes
    from dlfp.train.engine.logging import save_image_grid

    levels = torch.linspace(-1, 1, 6)
    top = torch.stack([torch.full((3, 8, 8), float(v)) for v in levels[:3]])
    bottom = torch.stack([torch.full((3, 4, 4), float(v)) for v in levels[3:]])  # half size: scaled up
    save_image_grid(tmp_path / "grid.png", [top, bottom])
    image = decode_png_bytes((tmp_path / "grid.png").read_bytes())
    assert image.shape == (16, 24, 3)
    for index, value in enumerate(levels.tolist()):
        row, column = divmod(index, 3)
        block = image[row * 8:(row + 1) * 8, column * 8:(column + 1) * 8]
        assert (block == round((value + 1) * 127.5)).all(), (row, column)


def test_ema_half_life_is_counted_in_images() -> None:
    decay = ema_decay(images_per_step=8, half_life_images=80)
    assert decay ** 10 == pytest.approx(0.5)
    # ramp-up: after 160 images the half-life is at most 0.05 * 160 = 8 images (one step)
    assert ema_decay(8, 80, images_seen=160, rampup=0.05) == pytest.approx(0.5)
    assert ema_decay(8, 80, images_seen=10**6, rampup=0.05) == pytest.approx(decay)
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(10):
        ema.update(model)
    assert ema.model.weight.item() == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------- steps
def test_a_few_steps_reduce_the_pixel_loss(data: dict[str, Path], prior_file: Path) -> None:
    only_pixels = {"pixel": 1.0, "pyramid": 1.0, "gan": 0, "component_gan": 0, "component_style": 0,
                   "perceptual": 0, "perceptual_style": 0, "identity": 0}
    params = make_params(train={"fix_decoder": True, "weights": only_pixels})
    state, cfg = prior.load_prior(prior_file)
    trainer = gfpgan.GFPGANTrainer(params.train, state, cfg, 7, DistInfo(), torch.device("cpu"), None, None)
    stream = ShardStream(data["shards"], train_records(data["shards"]),
                         SampleRecipe(seed=7, out_size=SIZE, preset=DegradationParams()))
    batch = next(Batches(stream, 4))
    losses = [trainer.step(batch, step)["pixel"].item() for step in range(1, 9)]
    assert losses[-1] < 0.8 * losses[0], losses
    decoder = trainer.net_g.stylegan_decoder
    assert all(not q.requires_grad for q in decoder.parameters())  # the prior stays frozen
    assert torch.equal(decoder.constant_input.weight, state["constant_input.weight"])


def test_gradient_clipping_bounds_the_update_and_logs_the_norm(data: dict[str, Path], prior_file: Path) -> None:
    """grad_clip_norm rescales the generator gradient to the limit; the pre-clip norm is logged."""
    only_pixels = {"pixel": 1.0, "pyramid": 1.0, "gan": 0, "component_gan": 0, "component_style": 0,
                   "perceptual": 0, "perceptual_style": 0, "identity": 0}
    limit = 1e-3
    params = make_params(train={"weights": only_pixels, "grad_clip_norm": limit})
    state, cfg = prior.load_prior(prior_file)
    trainer = gfpgan.GFPGANTrainer(params.train, state, cfg, 7, DistInfo(), torch.device("cpu"), None, None)
    stream = ShardStream(data["shards"], train_records(data["shards"]),
                         SampleRecipe(seed=7, out_size=SIZE, preset=DegradationParams()))
    losses = trainer.step(next(Batches(stream, 4)), 1)
    grads = [q.grad for q in trainer.net_g.parameters() if q.grad is not None]
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert losses["g_grad_norm"].item() > limit  # a random network's gradient is far above the limit
    assert clipped.item() == pytest.approx(limit, rel=1e-3)


def _run_gfpgan(data: dict[str, Path], prior_file: Path, out: Path, stop_after: int | None = None,
                **train) -> dict:
    params = make_params(train={"iters": 6, "checkpoint_every": 2, "val_every": 3, "sample_every": 6, **train})
    return train_stage.run(params, data["shards"], prior_file, data["pairs"], out, stop_after=stop_after)


def _run_prior(data: dict[str, Path], out: Path, stop_after: int | None = None, shards: Path | None = None,
               **train_prior) -> dict:
    params = make_params({"iters": 6, "checkpoint_every": 2, "sample_every": 3, **train_prior})
    return prior_stage.run(params, shards or data["shards"], out, stop_after=stop_after)


def _receipt(folder: Path) -> dict:
    return json.loads((folder / "receipt.json").read_text())


def _partial_checkpoint(out: Path) -> dict:
    return torch.load(checkpoint_path(Path(f"{out}.partial")), weights_only=True)


def _assert_same_weights(a_file: Path, b_file: Path) -> None:
    a = torch.load(a_file, weights_only=True)["params_ema"]
    b = torch.load(b_file, weights_only=True)["params_ema"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# DataLoader worker counts before and after the interruption; the demo uses 1. A change of the count is allowed on
# resume (dlfp.train.engine.checkpoint.RESULT_NEUTRAL_KEYS), so it must not change the result either.
WORKER_CASES = [(0, 0), (2, 2), (0, 2)]


@pytest.mark.parametrize(("workers", "workers_on_resume"), WORKER_CASES)
def test_resume_is_bit_identical_to_an_uninterrupted_run(data: dict[str, Path], prior_file: Path,
                                                         tmp_path: Path, workers: int, workers_on_resume: int) -> None:
    straight = tmp_path / "straight"
    summary = _run_gfpgan(data, prior_file, straight, workers=workers)
    assert summary["steps"] == 6
    interrupted = tmp_path / "interrupted"
    with pytest.raises(TrainingInterrupted, match="step 3"):
        _run_gfpgan(data, prior_file, interrupted, stop_after=3, workers=workers)
    assert _partial_checkpoint(interrupted)["step"] == 3
    _run_gfpgan(data, prior_file, interrupted, workers=workers_on_resume)
    _assert_same_weights(straight / gfpgan.MODEL_FILE, interrupted / gfpgan.MODEL_FILE)
    assert (straight / "losses.csv").read_text() == (interrupted / "losses.csv").read_text()
    assert (straight / gfpgan.VALIDATION_CSV).read_text() == (interrupted / gfpgan.VALIDATION_CSV).read_text()
    # one recipe from start to end, recorded as such
    provenance = _receipt(interrupted)["provenance"]
    assert provenance == _receipt(straight)["provenance"]
    assert provenance["history"] == [{"from_step": 0, "hash": provenance["hash"], "forced": False, "changed": []}]
    # official format, loadable by the restore stage; config and logs beside it
    from dlfp.models.checkpoints import load_into
    from dlfp.models.gfpgan import GFPGANv1Clean

    config = json.loads((straight / gfpgan.CONFIG_FILE).read_text())["config"]
    load_into(GFPGANv1Clean(**config), straight / gfpgan.MODEL_FILE)
    active = json.loads((straight / gfpgan.LOSSES_ACTIVE).read_text())
    assert active["terms"]["perceptual"]["weight"] == 0 and "off" in active["terms"]["perceptual"]["note"]
    assert active["terms"]["pixel"]["weight"] == 0.1 and active["terms"]["identity"]["network"] is None
    rows = (straight / gfpgan.VALIDATION_CSV).read_text().splitlines()
    assert rows[0].startswith("step,pairs,psnr,psnr_lq") and [r.split(",")[0] for r in rows[1:]] == ["3", "6"]
    assert (straight / "samples" / "step-000006.png").is_file() and not (straight / "checkpoints").exists()


@pytest.mark.parametrize(("workers", "workers_on_resume"), WORKER_CASES)
def test_prior_resume_is_bit_identical_to_an_uninterrupted_run(data: dict[str, Path], tmp_path: Path,
                                                               workers: int, workers_on_resume: int) -> None:
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert _run_prior(data, straight, workers=workers)["steps"] == 6
    with pytest.raises(TrainingInterrupted, match="step 3"):
        _run_prior(data, interrupted, stop_after=3, workers=workers)
    assert _partial_checkpoint(interrupted)["step"] == 3
    _run_prior(data, interrupted, workers=workers_on_resume)
    _assert_same_weights(straight / prior.PRIOR_FILE, interrupted / prior.PRIOR_FILE)
    assert (straight / "losses.csv").read_text() == (interrupted / "losses.csv").read_text()
    for grid in ("step-000000.png", "step-000003.png", "step-000006.png"):
        assert (straight / "samples" / grid).read_bytes() == (interrupted / "samples" / grid).read_bytes()
    assert _receipt(interrupted)["provenance"] == _receipt(straight)["provenance"]
    # the face measurement resumes too: the same rows, step 3 measured once
    metrics = (straight / prior_metrics.METRICS_CSV).read_text()
    assert metrics == (interrupted / prior_metrics.METRICS_CSV).read_text()
    assert [line.split(",")[0] for line in metrics.splitlines()[1:]] == ["0", "3", "6"]


def test_prior_resume_with_diffaugment_is_bit_identical(data: dict[str, Path], tmp_path: Path) -> None:
    """The augmentation's generator state travels in the checkpoint: a resumed run draws the same augmentations."""
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    policy = {"diffaugment": "color,translation,cutout", "workers": 0, "eval_samples": 0}
    _run_prior(data, straight, **policy)
    with pytest.raises(TrainingInterrupted, match="step 3"):
        _run_prior(data, interrupted, stop_after=3, **policy)
    _run_prior(data, interrupted, **policy)
    _assert_same_weights(straight / prior.PRIOR_FILE, interrupted / prior.PRIOR_FILE)
    assert (straight / "losses.csv").read_text() == (interrupted / "losses.csv").read_text()
    active = json.loads((straight / prior.LOSSES_ACTIVE).read_text())["terms"]["diffaugment"]
    assert active["policy"] == "color,translation,cutout" and isinstance(active["seed"], int)


@pytest.mark.parametrize("policy", ["", "cutout"])
def test_prior_discriminator_sees_augmented_images_when_configured(data: dict[str, Path], policy: str) -> None:
    params = make_params({"diffaugment": policy, "r1_interval": 1})  # step 1 applies R1
    trainer = prior.PriorTrainer(params.train_prior, params.seed, DistInfo(), torch.device("cpu"))
    stream = ShardStream(data["shards"], train_records(data["shards"]), SampleRecipe(seed=params.seed, out_size=SIZE),
                         shuffle_buffer=4)
    batch = next(Batches(stream, 2))
    seen: list[torch.Tensor] = []
    hook = trainer.discriminator.register_forward_pre_hook(lambda _d, args: seen.append(args[0].detach().clone()))
    trainer.step(batch, 1)
    hook.remove()
    assert len(seen) == 4  # D step: fake, real; R1: real; G step: fake
    real = batch["gt"]
    zeroed = torch.stack([(x == 0).all(dim=1).flatten(1).sum(1) for x in seen])  # pixels zero in all channels
    if not policy:
        assert sum(torch.equal(x, real) for x in seen) == 2 and (zeroed == 0).all()
        return
    # every image D sees, fake or real, in both steps and in R1, has its cutout square (at least a quarter of it)
    assert (zeroed >= (SIZE // 4) ** 2).all()
    reals = [x for x in seen if ((x == real) | (x == 0)).all()]
    assert len(reals) == 2 and not any(torch.equal(x, real) for x in reals)


@pytest.mark.parametrize("equalized_lr", [False, True])
def test_prior_generator_steps_match_stylegan2_equalized_lr(data: dict[str, Path], equalized_lr: bool) -> None:
    """Adam's first step (beta1 = 0) moves every weight by its lr (sign of the gradient): with equalized_lr that is
    lr / sqrt(fan_in) for a modulated conv, lr * 0.01 / sqrt(fan_in) in the mapping network, lr for biases; a
    milestone keeps the ratios."""
    from dlfp.models.stylegan2 import MAPPING_LR_MUL

    params = make_params({"equalized_lr": equalized_lr, "lr_milestones": [1], "lr_gamma": 0.5})
    trainer = prior.PriorTrainer(params.train_prior, params.seed, DistInfo(), torch.device("cpu"))
    stream = ShardStream(data["shards"], train_records(data["shards"]), SampleRecipe(seed=params.seed, out_size=SIZE),
                         shuffle_buffer=4)
    before = {k: v.detach().clone() for k, v in trainer.generator.named_parameters()}
    trainer.step(next(Batches(stream, 2)), 0)
    after = dict(trainer.generator.named_parameters())
    lr, width = params.train_prior.lr, TINY_NET["num_style_feat"]
    conv = trainer.generator.style_convs[1].modulated_conv
    expected = {"style_convs.1.modulated_conv.weight": lr / (conv.in_channels * 9) ** 0.5,
                "style_mlp.1.weight": lr * MAPPING_LR_MUL / width ** 0.5,
                "style_convs.1.modulated_conv.modulation.weight": lr / width ** 0.5,
                "to_rgb1.bias": lr, "constant_input.weight": lr}
    for name, step_size in expected.items():
        moved = (after[name].detach() - before[name]).abs()
        target = step_size if equalized_lr else lr  # less where |grad| ~ Adam's eps; 1%: float32 rounding
        assert moved.max() <= target * 1.01 and abs(moved.median() / target - 1) < 1e-2, name
    assert sum(len(g["params"]) for g in trainer.opt_g.param_groups) == len(before)
    trainer.step(next(Batches(stream, 2)), 2)  # past the milestone: halves every group's lr, keeping their ratios
    rates = sorted(g["lr"] for g in trainer.opt_g.param_groups)
    assert rates[-1] == pytest.approx(lr / 2)
    assert (rates[0] == pytest.approx(lr * MAPPING_LR_MUL / width ** 0.5 / 2)) == equalized_lr


@pytest.mark.parametrize("noise_inputs", [True, False])
def test_prior_without_noise_inputs_keeps_every_noise_strength_at_zero(data: dict[str, Path],
                                                                        noise_inputs: bool) -> None:
    """train_prior.noise_inputs false: the strengths are never trained, so the noise maps add nothing and the
    samples drawn with noise equal those drawn with it off; true trains them like every other weight."""
    from dlfp.models.stylegan2 import noise_strength_names

    params = make_params({"noise_inputs": noise_inputs})
    trainer = prior.PriorTrainer(params.train_prior, params.seed, DistInfo(), torch.device("cpu"))
    stream = ShardStream(data["shards"], train_records(data["shards"]), SampleRecipe(seed=params.seed, out_size=SIZE),
                         shuffle_buffer=4)
    for step in range(2):
        trainer.step(next(Batches(stream, 2)), step)
    names = noise_strength_names(trainer.generator)
    assert len(names) == trainer.generator.num_layers
    for model in (trainer.generator, trainer.ema.model):
        strengths = torch.cat([p.detach().flatten() for n, p in model.named_parameters() if n in names])
        assert (strengths != 0).all() if noise_inputs else (strengths == 0).all()
    assert torch.equal(trainer.samples(), trainer.samples(noise_off=True)) != noise_inputs


@pytest.mark.parametrize("equalized_lr", [False, True])
def test_gfpgan_generator_steps_match_gfpganv1_equalized_lr(data: dict[str, Path], prior_file: Path,
                                                            equalized_lr: bool) -> None:
    """train.equalized_lr: Adam's first step (beta1 = 0) moves each weight by its lr: lr / sqrt(fan_in) for the
    U-Net's and SFT heads' convs and the final linear (GFPGANv1's EqualConv2d / EqualLinear), the decoder's
    StyleGAN2 scales, lr for biases; off: lr everywhere (one group). The mapping network gets no gradient here
    (input_is_latent), so its group's multiplier (x0.01) is checked instead."""
    from dlfp.models.stylegan2 import MAPPING_LR_MUL

    only_pixels = {"pixel": 1.0, "pyramid": 1.0, "gan": 0, "component_gan": 0, "component_style": 0,
                   "perceptual": 0, "perceptual_style": 0, "identity": 0}
    params = make_params(train={"equalized_lr": equalized_lr, "weights": only_pixels, "grad_clip_norm": None})
    state, cfg = prior.load_prior(prior_file)
    trainer = gfpgan.GFPGANTrainer(params.train, state, cfg, 7, DistInfo(), torch.device("cpu"), None, None)
    stream = ShardStream(data["shards"], train_records(data["shards"]),
                         SampleRecipe(seed=7, out_size=SIZE, preset=DegradationParams()), shuffle_buffer=4)
    net = trainer.net_g
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    trainer.step(next(Batches(stream, 2)), 1)
    after = dict(net.named_parameters())
    lr = params.train.lr * params.train.lr_scale
    first, sft = net.conv_body_first, net.condition_scale[0][2]
    conv = net.stylegan_decoder.style_convs[1].modulated_conv
    expected = {"conv_body_first.weight": lr / first.in_channels ** 0.5,
                "condition_scale.0.2.weight": lr / (sft.in_channels * 9) ** 0.5,
                "final_linear.weight": lr / net.final_linear.in_features ** 0.5,
                "stylegan_decoder.style_convs.1.modulated_conv.weight": lr / (conv.in_channels * 9) ** 0.5,
                "conv_body_first.bias": lr}
    for name, step_size in expected.items():
        moved = (after[name].detach() - before[name]).abs()
        target = step_size if equalized_lr else lr  # less where |grad| ~ Adam's eps; 1%: float32 rounding
        assert moved.max() <= target * 1.01 and abs(moved.median() / target - 1) < 1e-2, name
    assert sum(len(g["params"]) for g in trainer.opt_g.param_groups) == len(before)
    assert (len(trainer.opt_g.param_groups) > 1) == equalized_lr
    mapping_weight = net.stylegan_decoder.style_mlp[1].weight
    mapping = {g["lr_mul"] for g in trainer.opt_g.param_groups if any(q is mapping_weight for q in g["params"])}
    assert mapping == ({MAPPING_LR_MUL / TINY_NET["num_style_feat"] ** 0.5} if equalized_lr else {1.0})


def test_prior_measures_its_samples_at_step_0_and_every_sample_step(data: dict[str, Path], tmp_path: Path) -> None:
    measured, unmeasured = tmp_path / "measured", tmp_path / "unmeasured"
    _run_prior(data, measured, iters=5, sample_every=2)
    _run_prior(data, unmeasured, iters=5, sample_every=2, eval_samples=0)
    # the measurement draws nothing from the training RNG: the same weights with and without it
    _assert_same_weights(measured / prior.PRIOR_FILE, unmeasured / prior.PRIOR_FILE)
    assert not (unmeasured / prior_metrics.METRICS_CSV).exists()
    with open(measured / prior_metrics.METRICS_CSV, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == [0, 2, 4, 5]  # initialisation, every sample step, the end
    assert sorted(p.name for p in (measured / "samples").iterdir()) == [f"step-{s:06d}.png" for s in (0, 2, 4, 5)]
    for row in rows:
        assert int(row["n_samples"]) == 8 and int(row["n_real"]) == TRAIN_COUNT // 2  # 2 x 8 wanted, 12 exist
        rate = float(row["detection_rate"])
        assert rate * 8 == round(rate * 8) and float(row["ci_low"]) <= rate <= float(row["ci_high"])
        assert float(row["fd_dlib"]) > 0
        off = float(row["detection_rate_noise_off"])  # the same latents rendered with every noise input at zero
        assert off * 8 == round(off * 8) and float(row["ci_low_noise_off"]) <= off <= float(row["ci_high_noise_off"])
        assert float(row["fd_dlib_noise_off"]) > 0
    reference = json.loads((measured / prior_metrics.REFERENCE_JSON).read_text())
    assert reference["real_faces"]["n_real"] == TRAIN_COUNT and reference["eval_samples"] == 8
    assert reference["real_faces"]["frame"] == prior_metrics.EVAL_FRAME and "biased upward" in reference["claim"]
    assert len(reference["seconds_per_checkpoint"]) == 4


def test_a_train_split_too_small_for_the_face_measurement_skips_it_and_says_why(tmp_path: Path) -> None:
    shards, rng = tmp_path / "shards", np.random.default_rng(1)
    writer = ShardSetWriter(shards, "train/clean-{:06d}.tar", samples_per_shard=8)
    for i in range(3):
        writer.write({"__key__": f"f{i}", "gt.png": encode_png(_face(rng)),
                      "json": json_bytes({"id": f"f{i}", "split": "train"})})
    records = [r.__dict__ for r in writer.close()]
    write_json_atomic(shards / "index.json", {"splits": {"train": {"count": 3, "shards": records}}})
    out = tmp_path / "prior"
    assert prior_stage.run(make_params({"iters": 2}), shards, out)["steps"] == 2  # training itself goes on
    assert not (out / prior_metrics.METRICS_CSV).exists()
    skipped = json.loads((out / prior_metrics.REFERENCE_JSON).read_text())["skipped"]
    assert "only 3 train face(s)" in skipped and "at least 4" in skipped


def test_resume_under_another_loss_weight_stops_and_force_records_both_hashes(data: dict[str, Path],
                                                                              prior_file: Path,
                                                                              tmp_path: Path) -> None:
    out = tmp_path / "gfpgan"
    with pytest.raises(TrainingInterrupted):
        _run_gfpgan(data, prior_file, out, stop_after=3)
    trained_with = _partial_checkpoint(out)["provenance"]
    assert trained_with["params"]["train.weights.identity"] == 10.0
    assert trained_with["params"]["inputs.prior_sha256"] and trained_with["params"]["inputs.pairs_index_sha256"]
    with pytest.raises(RuntimeError, match=r"train\.weights\.identity: 10\.0 -> 0\.0") as refused:
        _run_gfpgan(data, prior_file, out, weights={"identity": 0.0})
    assert "resume: force" in str(refused.value) and "weights.pixel" not in str(refused.value)
    assert _partial_checkpoint(out)["step"] == 3  # nothing trained, nothing overwritten
    assert _run_gfpgan(data, prior_file, out, weights={"identity": 0.0}, resume="force")["steps"] == 6
    provenance = _receipt(out)["provenance"]
    assert provenance["hash"] != trained_with["hash"]
    assert provenance["history"] == [
        {"from_step": 0, "hash": trained_with["hash"], "forced": False, "changed": []},
        {"from_step": 3, "hash": provenance["hash"], "forced": True, "changed": ["train.weights.identity"]}]


def test_resume_names_changed_inputs_and_ignores_logging_settings(data: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "prior"
    with pytest.raises(TrainingInterrupted):
        _run_prior(data, out, stop_after=1)
    # another learning rate and other training data: both named, the logging/threads changes are not
    other_shards = tmp_path / "shards"
    shutil.copytree(data["shards"], other_shards)
    index = json.loads((other_shards / "index.json").read_text())
    index["splits"]["train"]["note"] = "rebuilt"
    (other_shards / "index.json").write_text(json.dumps(index))
    with pytest.raises(RuntimeError, match="was trained with other parameters") as refused:
        _run_prior(data, out, shards=other_shards, lr=1e-3, threads=2, checkpoint_every=1, tensorboard=True)
    message = str(refused.value)
    assert "train_prior.lr: 0.002 -> 0.001" in message and "inputs.shards_index_sha256" in message
    assert "threads" not in message and "checkpoint_every" not in message and "tensorboard" not in message
    # settings that cannot change the result resume without force
    assert _run_prior(data, out, threads=2, checkpoint_every=1, sample_every=5, keep_checkpoints=True,
                      tensorboard=True, workers=2, eval_samples=4)["steps"] == 6
    assert _receipt(out)["provenance"]["history"][-1]["forced"] is False


def test_a_checkpoint_without_provenance_is_refused_unless_forced(tmp_path: Path) -> None:
    from dlfp.train.engine.checkpoint import resume_provenance, training_provenance

    current = training_provenance({"seed": 7, "train.lr": 0.002})
    legacy = {"step": 5, "state": {}}
    with pytest.raises(RuntimeError, match="records no training parameters"):
        resume_provenance(legacy, current, True, tmp_path / "last.pth")
    forced = resume_provenance(legacy, current, "force", tmp_path / "last.pth")
    assert [(h["from_step"], h["hash"], h["forced"]) for h in forced["history"]] == [
        (0, None, False), (5, current["hash"], True)]


def test_converting_the_identity_network_draws_nothing_from_the_training_rng(tmp_path: Path) -> None:
    """The validator converts dlib's network on first use (an empty DLFP_CACHE), after the training RNG was seeded or
    restored from a checkpoint: the conversion must leave that RNG alone, or the trained weights would depend on
    the state of the weights cache (and a resumed run would drift from an uninterrupted one)."""
    from dlfp.models import dlib_resnet as idm

    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert idm.convert_dlib_resnet(cache=tmp_path).converted_now
    assert torch.equal(torch.get_rng_state(), before)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data: dict[str, Path], prior_file: Path,
                                                                  tmp_path: Path, monkeypatch) -> None:
    original = gfpgan.GFPGANTrainer.step

    def poisoned(self, batch: dict, step: int) -> dict:
        losses = original(self, batch, step)
        if step == 3:
            losses["pixel"] = torch.tensor(float("nan"))
        return losses

    monkeypatch.setattr(gfpgan.GFPGANTrainer, "step", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"step 3: pixel=nan"):
        _run_gfpgan(data, prior_file, out)
    assert torch.load(checkpoint_path(Path(f"{out}.partial")), weights_only=True)["step"] == 2
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ signals
SIGTERM_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from dlfp.stages import train_prior as prior_stage
    from dlfp.train.engine.loop import TrainingInterrupted
    import test_train as t
    params = t.make_params({{"iters": 10000, "checkpoint_every": 10000}})
    try:
        prior_stage.run(params, Path({shards!r}), Path({out!r}))
    except TrainingInterrupted as error:
        print("INTERRUPTED", error.step, flush=True)
        sys.exit(3)
""")


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "prior"
    script = SIGTERM_SCRIPT.format(tests=str(Path(__file__).parent), shards=str(data["shards"]), out=str(out))
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    losses = Path(f"{out}.partial") / "losses.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if losses.exists() and len(losses.read_text().splitlines()) >= 3:  # header + 2 steps
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr[-2000:]
    step = int(stdout.split("INTERRUPTED")[1].split()[0])
    assert step >= 2
    checkpoint = torch.load(checkpoint_path(Path(f"{out}.partial")), weights_only=True)
    assert checkpoint["step"] == step
    assert "SIGTERM" in stderr


# ---------------------------------------------------------------------------------------- data parallel
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, shards: str, out: str) -> None:
    import torch.distributed as dist

    from dlfp.train.engine.distributed import init_distributed

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    info = init_distributed("cpu")
    params = make_params({"r1_interval": 1})
    p = params.train_prior
    trainer = prior.PriorTrainer(p, params.seed, info, torch.device("cpu"))
    torch.manual_seed(100 + rank)  # ranks draw different latents, as rank_seed makes them
    stream = ShardStream(Path(shards), train_records(Path(shards)), SampleRecipe(seed=params.seed, out_size=SIZE),
                         rank=info.rank, world_size=info.world_size, shuffle_buffer=4)
    batches = Batches(stream, p.batch_size)
    keys = []
    for step in (1, 2):
        batch = next(batches)
        keys += batch["key"]
        trainer.step(batch, step)
    torch.save({"state": trainer.state_dict(), "keys": keys}, Path(out) / f"rank{rank}.pth")
    dist.destroy_process_group()


def test_two_gloo_ranks_end_with_identical_weights(data: dict[str, Path], tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(data["shards"]), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pth", weights_only=True) for r in range(2)]
    assert not set(ranks[0]["keys"]) & set(ranks[1]["keys"])  # each rank trained on its own samples
    for name in ("generator", "discriminator", "ema"):
        a, b = ranks[0]["state"][name], ranks[1]["state"][name]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    initial = prior.PriorTrainer(make_params().train_prior, 7, DistInfo(), torch.device("cpu")).generator.state_dict()
    trained = ranks[0]["state"]["generator"]
    assert any(not torch.equal(initial[k], trained[k]) for k in initial)  # and they did train


# --------------------------------------------------------------------------------------------- stage files
def test_prior_stage_writes_a_weights_only_prior_with_config(prior_file: Path) -> None:
    from dlfp.models.stylegan2 import StyleGAN2GeneratorClean

    state, config = prior.load_prior(prior_file)
    assert config == TINY_NET
    StyleGAN2GeneratorClean(**config).load_state_dict(state, strict=True)
    folder = prior_file.parent
    assert (folder / "samples" / "step-000002.png").is_file()
    assert (folder / "losses.csv").read_text().splitlines()[0].startswith("step,g_gan,d_gan,r1")
    receipt = json.loads((folder / "receipt.json").read_text())
    assert receipt["stage"] == "train_prior" and receipt["counts"]["steps"] == 2
    assert "path_length" in json.loads((folder / prior.LOSSES_ACTIVE).read_text())["terms"]


def test_official_weights_are_converted_strictly(tmp_path: Path, data: dict[str, Path]) -> None:
    from dlfp.models.checkpoints import CheckpointMismatchError, save_official
    from dlfp.models.stylegan2 import StyleGAN2GeneratorClean

    official = save_official(StyleGAN2GeneratorClean(**TINY_NET), tmp_path / "official.pth")
    summary = prior_stage.run(make_params({"official_weights": str(official)}), data["shards"], tmp_path / "out")
    assert summary["mode"] == "official_weights"
    state, _ = prior.load_prior(tmp_path / "out" / prior.PRIOR_FILE)
    expected = torch.load(official, weights_only=True)["params_ema"]
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        prior_stage.run(make_params({"official_weights": str(official), "narrow": 0.125}), data["shards"],
                  tmp_path / "bad")


def test_resume_refuses_a_checkpoint_of_another_architecture(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "prior"
    with pytest.raises(TrainingInterrupted):
        prior_stage.run(make_params({"iters": 4}), data["shards"], out, stop_after=1)
    with pytest.raises(RuntimeError, match=r"train_prior\.num_style_feat: 32 -> 16.*resume: false"):
        prior_stage.run(make_params({"iters": 4, "num_style_feat": 16}), data["shards"], out)
    with pytest.raises(RuntimeError, match="network config"):  # force cannot load another architecture
        prior_stage.run(make_params({"iters": 4, "num_style_feat": 16, "resume": "force"}), data["shards"], out)


def test_paper_parameters_validate_and_match_the_published_recipe() -> None:
    from dlfp.params import load_params

    params = load_params(Path(__file__).resolve().parents[1] / "params-paper.yaml")
    t = params.train
    assert (params.data.size, t.iters, t.lr, t.lr_milestones, t.fix_decoder) == (512, 800000, 2e-3,
                                                                                 [600000, 700000], True)
    assert t.batch_size * 4 == 12
    assert ema_decay(12, t.ema_half_life_images) == pytest.approx(0.5 ** (32 / 10000))
    assert (t.weights.pixel, t.weights.perceptual_style, t.weights.component_style, t.weights.identity) == (
        0.1, 50.0, 200.0, 10.0)


@pytest.mark.parametrize("name", ["params.yaml", "params-paper.yaml"])
def test_shipped_recipes_restore_at_the_resolution_they_are_scored_at(name: str) -> None:
    """The restorer's output is its prior's size: equal to data.size, nothing is upsampled before scoring; and the
    demo trains on every preset it is evaluated on."""
    from dlfp.params import load_params

    params = load_params(Path(__file__).resolve().parents[1] / name)
    assert params.train_prior.out_size == params.data.size
    if name == "params.yaml":
        assert set(params.train.presets) == set(params.degrade.presets)


def test_train_writes_a_first_model_card_beside_the_weights(data: dict[str, Path], prior_file: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "gfpgan"
    _run_gfpgan(data, prior_file, out)
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    receipt = _receipt(out)
    active = json.loads((out / "losses_active.json").read_text())
    assert f"Steps: {receipt['counts']['steps']};" in card
    assert f"output side {receipt['config']['out_size']} px" in card
    assert f"| pixel | {active['terms']['pixel']['weight']:.4f} |" in card
    assert "not computed: evaluation — not yet run at training time: see reports/MODEL_CARD.md" in card
