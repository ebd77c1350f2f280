"""Models: official layouts, modulated-conv equivalence, determinism, gradients, checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dlfp.models import GFPGANv1Clean, StyleGAN2GeneratorClean
from dlfp.models.checkpoints import (
    CheckpointMismatchError,
    WeightsMissingError,
    load_into,
    read_state_dict,
    save_official,
)
from dlfp.models.components import FacialComponentDiscriminator
from dlfp.models.gfpgan import release_model
from dlfp.models.stylegan2 import (
    Blur,
    ModulatedConv2d,
    StyleGAN2Discriminator,
    ToRGB,
    minibatch_stddev,
    modulated_conv_reference,
    set_modulated_conv_impl,
)

torch.set_num_threads(min(2, torch.get_num_threads()))

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT.parent / "shared" / "reference" / "state_dicts"
RELEASE_PARAMS = 86_444_252
REL_TOL = 1e-5
# A small configuration that runs forward + backward in well under a second.
TINY = dict(out_size=64, num_style_feat=64, channel_multiplier=1, num_mlp=2, narrow=0.25)


def shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def manifest(name: str) -> dict[str, list[int]]:
    path = MANIFESTS / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return json.loads(path.read_text())


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


NOISE_STRENGTH = 0.1  # initialised to 0; a trained prior uses its noise inputs


def tiny_gfpgan(seed: int = 0, **overrides) -> GFPGANv1Clean:
    torch.manual_seed(seed)
    model = GFPGANv1Clean(**{**TINY, **overrides})
    with torch.no_grad():
        for conv in [model.stylegan_decoder.style_conv1, *model.stylegan_decoder.style_convs]:
            conv.weight.fill_(NOISE_STRENGTH)
    return model


# ---------------------------------------------------------------- layouts ---------------------------------


@pytest.mark.parametrize(
    ("factory", "name"),
    [
        (release_model, "gfpganv1clean_512.json"),
        (lambda: StyleGAN2GeneratorClean(512, num_style_feat=512, num_mlp=8, channel_multiplier=2, narrow=1),
         "stylegan2clean_512.json"),
        (lambda: StyleGAN2Discriminator(512, channel_multiplier=1), "stylegan2_discriminator_512_c1.json"),
        (lambda: StyleGAN2Discriminator(512, channel_multiplier=2), "stylegan2_discriminator_512_c2.json"),
        (FacialComponentDiscriminator, "facial_component_discriminator.json"),
    ],
)
def test_state_dict_layout_equals_official_manifest(factory, name):
    with torch.device("meta"):  # shapes only: no 86 M random numbers to draw
        model = factory()
    assert shapes(model) == manifest(name)


def test_release_parameter_count_and_decoder_prefix():
    with torch.device("meta"):
        model = release_model()
    assert sum(p.numel() for p in model.parameters()) == RELEASE_PARAMS
    decoder = {k.removeprefix("stylegan_decoder."): v for k, v in shapes(model).items()
               if k.startswith("stylegan_decoder.")}
    assert decoder == manifest("stylegan2clean_512.json")
    assert not any(p.requires_grad for p in model.stylegan_decoder.parameters())  # fix_decoder default


@pytest.mark.parametrize("out_size", [48, 2048, 100])
def test_invalid_resolution_is_rejected(out_size):
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2GeneratorClean(out_size)


# ---------------------------------------------------------------- modulated conv ---------------------------


@pytest.mark.parametrize(
    ("kernel", "demodulate", "upsample"),
    [(3, True, False), (3, True, True), (1, False, False), (3, False, True)],
)
def test_static_weight_modulated_conv_equals_grouped_reference(kernel, demodulate, upsample):
    torch.manual_seed(1)
    conv = ModulatedConv2d(12, 20, kernel, num_style_feat=16, demodulate=demodulate, upsample=upsample)
    with torch.no_grad():
        conv.modulation.bias.uniform_(-2, 2)  # styles far from 1 and of both signs
    x, style = torch.randn(3, 12, 9, 9), torch.randn(3, 16)
    ours = conv(x, style)
    reference = modulated_conv_reference(conv, x, style)
    assert ours.shape == reference.shape == (3, 20, 18 if upsample else 9, 18 if upsample else 9)
    assert rel_err(ours, reference) < REL_TOL


def test_torgb_without_demodulation_equals_reference():
    torch.manual_seed(2)
    to_rgb = ToRGB(24, num_style_feat=16)
    x, style, skip = torch.randn(2, 24, 8, 8), torch.randn(2, 16), torch.randn(2, 3, 4, 4)
    expected = (modulated_conv_reference(to_rgb.modulated_conv, x, style) + to_rgb.bias
                + F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False))
    assert rel_err(to_rgb(x, style, skip), expected) < REL_TOL


def test_whole_model_static_equals_grouped_formulation():
    model = tiny_gfpgan(seed=3).eval()
    model.fixed_noise = True
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, ours_rgbs = model(x)
        set_modulated_conv_impl(model, "grouped")
        reference, reference_rgbs = model(x)
    assert rel_err(ours, reference) < REL_TOL
    assert all(torch.equal(a, b) for a, b in zip(ours_rgbs, reference_rgbs, strict=True))


# ---------------------------------------------------------------- GFPGAN forward / determinism -------------


def test_forward_shapes_and_pyramid():
    model = tiny_gfpgan().eval()
    with torch.no_grad():
        image, rgbs = model(torch.randn(2, 3, 64, 64))
    assert image.shape == (2, 3, 64, 64)
    assert [tuple(r.shape) for r in rgbs] == [(2, 3, s, s) for s in (8, 16, 32, 64)]
    assert torch.isfinite(image).all()
    latent, conditions, _ = model.encode(torch.randn(1, 3, 64, 64))
    assert latent.shape == (1, 10, 64)  # 2 log2(64) - 2 codes
    assert len(conditions) == 8


def test_deterministic_mode_repeats_and_random_mode_differs():
    model = tiny_gfpgan().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model.fixed_noise = True
        first, _ = model(x)
        second, _ = model(x)
        assert torch.equal(first, second)
        random_a, _ = model(x, randomize_noise=True)
        random_b, _ = model(x, randomize_noise=True)
    assert not torch.equal(random_a, random_b)
    assert torch.equal(model(x, randomize_noise=False)[0].detach(), first)


@pytest.mark.parametrize("overrides", [dict(sft_half=False), dict(different_w=False, input_is_latent=False)])
def test_other_configurations_run(overrides):
    model = tiny_gfpgan(**overrides).eval()
    with torch.no_grad():
        image, rgbs = model(torch.randn(1, 3, 64, 64))
    assert image.shape == (1, 3, 64, 64) and len(rgbs) == 4


def test_gradients_reach_unet_and_sft_and_decoder_stays_frozen():
    model = tiny_gfpgan()
    image, rgbs = model(torch.randn(2, 3, 64, 64))
    (image.square().mean() + sum(r.abs().mean() for r in rgbs)).backward()
    for name in ("conv_body_first.weight", "conv_body_down.0.conv1.weight", "final_linear.weight",
                 "conv_body_up.3.conv2.weight", "condition_scale.0.0.weight", "condition_shift.3.2.weight",
                 "toRGB.2.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in model.stylegan_decoder.parameters())


def test_unfrozen_decoder_gets_gradients():
    model = tiny_gfpgan(fix_decoder=False)
    image, _ = model(torch.randn(1, 3, 64, 64))
    image.mean().backward()
    grads = [p.grad for p in model.stylegan_decoder.style_convs.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------- generator / discriminators ---------------


def test_generator_from_z_mixing_and_fixed_noise():
    torch.manual_seed(4)
    gen = StyleGAN2GeneratorClean(64, num_style_feat=32, num_mlp=2, channel_multiplier=1, narrow=0.25).eval()
    z1, z2 = torch.randn(2, 32), torch.randn(2, 32)
    with torch.no_grad():
        image, latent = gen([z1], randomize_noise=False, return_latents=True)
        again, _ = gen([z1], randomize_noise=False)
        mixed, mixed_latent = gen([z1, z2], inject_index=3, randomize_noise=False, return_latents=True)
    assert image.shape == (2, 3, 64, 64) and latent.shape == (2, gen.num_latent, 32)
    assert torch.equal(image, again)
    assert torch.equal(mixed_latent[:, :3], latent[:, :3]) and not torch.equal(mixed, image)


def test_stylegan2_discriminator_forward_backward():
    torch.manual_seed(5)
    disc = StyleGAN2Discriminator(64, channel_multiplier=1, narrow=0.125)
    x = torch.randn(4, 3, 64, 64, requires_grad=True)
    logits = disc(x)
    assert logits.shape == (4, 1)
    F.softplus(-logits).mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert disc(torch.randn(3, 3, 64, 64)).shape == (3, 1)  # batch not divisible by the stddev group


def test_minibatch_stddev_is_zero_for_identical_samples():
    x = torch.randn(1, 8, 4, 4).repeat(4, 1, 1, 1)
    out = minibatch_stddev(x)
    assert out.shape == (4, 9, 4, 4)
    assert out[:, 8].abs().max() < 1e-3  # sqrt(eps)


def test_blur_keeps_constants_and_equals_separable_filter():
    blur = Blur(2, (2, 2))
    x = torch.randn(1, 2, 10, 10)
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8
    padded = F.pad(x, (2, 2, 2, 2))
    rows = F.conv2d(padded.reshape(2, 1, 14, 14), taps.view(1, 1, 1, 4))
    expected = F.conv2d(rows, taps.view(1, 1, 4, 1)).reshape(1, 2, 11, 11)
    assert rel_err(blur(x), expected) < REL_TOL
    const = blur(torch.ones(1, 2, 10, 10))
    assert torch.allclose(const[..., 3:-3, 3:-3], torch.ones(1), atol=1e-6)


def test_facial_component_discriminator_shapes():
    torch.manual_seed(6)
    disc = FacialComponentDiscriminator()
    out, feats = disc(torch.randn(2, 3, 80, 80), return_feats=True)
    assert out.shape == (2, 1, 20, 20)
    assert [tuple(f.shape) for f in feats] == [(2, 128, 40, 40), (2, 256, 20, 20)]
    assert disc(torch.randn(1, 3, 120, 120))[1] is None


# ---------------------------------------------------------------- checkpoints ------------------------------


def test_save_then_load_gives_identical_outputs(tmp_path):
    source = tiny_gfpgan(seed=7).eval()
    path = save_official(source, tmp_path / "ours.pth")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert list(payload) == ["params_ema"] and set(payload["params_ema"]) == set(source.state_dict())

    fresh = tiny_gfpgan(seed=8).eval()
    x = torch.randn(1, 3, 64, 64)
    source.fixed_noise = fresh.fixed_noise = True
    with torch.no_grad():
        assert not torch.equal(source(x)[0], fresh(x)[0])
        load_into(fresh, path)
        assert torch.equal(source(x)[0], fresh(x)[0])
    loaded = GFPGANv1Clean.from_checkpoint(path, **TINY).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x, randomize_noise=False)[0], source(x, randomize_noise=False)[0])


def test_checkpoint_writers_give_the_same_bytes_for_the_same_tensors(tmp_path):
    """torch.save given a path names the zip's root folder after the (random) temporary file: every writer of
    .pth files must give byte-identical files for identical tensors, still loadable with weights_only=True."""
    from dlfp.train.engine.checkpoint import LAST_CHECKPOINT, load_checkpoint, save_checkpoint
    from dlfp.train.engine.distributed import DistInfo
    from dlfp.train.prior import load_prior, save_prior

    torch.manual_seed(11)
    prior = StyleGAN2GeneratorClean(64, num_style_feat=16, num_mlp=1, channel_multiplier=1, narrow=0.0625)
    config = {"out_size": 64, "num_style_feat": 16}
    runs = [tmp_path / "first", tmp_path / "second"]
    for run in runs:
        save_official(prior, run / "gfpgan.pth")
        save_prior(run / "prior.pth", prior, config)
        torch.manual_seed(12)  # the same RNG state for both resume checkpoints
        save_checkpoint(run / "work", {"g": prior.state_dict()}, 3, {"epoch": 1}, DistInfo())
    names = ["gfpgan.pth", "prior.pth", f"work/checkpoints/{LAST_CHECKPOINT}", "work/checkpoints/rng-rank0.pth"]
    for name in names:
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), name
    expected = prior.state_dict()
    for state in (read_state_dict(runs[0] / "gfpgan.pth"), load_prior(runs[0] / "prior.pth")[0],
                  load_checkpoint(runs[0] / "work", DistInfo())["state"]["g"]):
        assert set(state) == set(expected)
        assert all(torch.equal(state[key], expected[key]) for key in expected)
    assert load_prior(runs[0] / "prior.pth")[1] == config


def test_params_key_fallback_and_bare_state_dict(tmp_path):
    model = tiny_gfpgan(seed=9)
    torch.save({"params": model.state_dict()}, tmp_path / "params.pth")
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    torch.save({"params_ema": model.state_dict(), "params": {}}, tmp_path / "both.pth")
    for name in ("params.pth", "bare.pth", "both.pth"):
        state = read_state_dict(tmp_path / name)
        assert torch.equal(state["final_linear.weight"], model.state_dict()["final_linear.weight"])


def test_decoder_load_path_loads_the_prior(tmp_path):
    torch.manual_seed(10)
    prior = StyleGAN2GeneratorClean(64, num_style_feat=64, num_mlp=2, channel_multiplier=1, narrow=0.25)
    path = save_official(prior, tmp_path / "prior.pth")
    model = GFPGANv1Clean(**TINY, decoder_load_path=path)
    assert torch.equal(model.stylegan_decoder.constant_input.weight, prior.constant_input.weight)


def test_wrong_checkpoint_names_file_and_lists_keys(tmp_path):
    torch.manual_seed(11)
    decoder_only = StyleGAN2GeneratorClean(64, num_style_feat=64, num_mlp=2, channel_multiplier=1,
                                           narrow=0.25)
    path = save_official(decoder_only, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointMismatchError) as info:
        load_into(tiny_gfpgan(), path)
    message = str(info.value)
    assert str(path) in message and "missing keys" in message and "unexpected keys" in message
    assert "conv_body_first.weight" in message and "constant_input.weight" in message

    wider = save_official(tiny_gfpgan(narrow=0.5), tmp_path / "wider.pth")
    with pytest.raises(CheckpointMismatchError, match="shape mismatches") as info:
        load_into(tiny_gfpgan(), wider)
    expected = list(tiny_gfpgan().conv_body_first.weight.shape)
    assert f"conv_body_first.weight: file [{2 * expected[0]}, 3, 1, 1] vs model {expected}" in str(info.value)


def test_missing_or_foreign_weights_file_errors(tmp_path):
    missing = tmp_path / "models" / "GFPGANv1.4.pth"
    with pytest.raises(WeightsMissingError, match="Place the file") as info:
        load_into(tiny_gfpgan(), missing)
    assert str(missing) in str(info.value) and "GFPGANv1.4.pth" in str(info.value)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="junk.pth"):
        read_state_dict(junk)


# ---------------------------------------------------------------- scripts ----------------------------------


@pytest.mark.slow
def test_gpu_train_step_smoke_runs_on_cpu(tmp_path):
    out = tmp_path / "train_step.json"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_train_step.py"), "--smoke", str(out)],
                   check=True, env=env, timeout=600)
    results = json.loads(out.read_text())
    assert results["smoke"] is True and [r["mode"] for r in results["runs"]] == ["eager-fp32", "eager-bf16"]
    assert all("error" not in r and r["img_per_s"] > 0 for r in results["runs"]), results["runs"]


@pytest.mark.parametrize(("mode", "factor"), [("down", 0.5), ("up", 2.0)])
def test_unet_block_equals_bilinear_formulation(mode, factor):
    from dlfp.models.gfpgan import UNetResBlock

    torch.manual_seed(12)
    block = UNetResBlock(8, 6, mode)
    x = torch.randn(2, 8, 16, 16)

    def resample(t):
        return F.interpolate(t, scale_factor=factor, mode="bilinear", align_corners=False)

    expected = (F.leaky_relu(block.conv2(resample(F.leaky_relu(block.conv1(x), 0.2))), 0.2)
                + block.skip(resample(x)))
    assert rel_err(block(x), expected) < REL_TOL


def test_bf16_autocast_forward_stays_close_to_fp32():
    model = tiny_gfpgan(seed=13).eval()
    model.fixed_noise = True
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full, _ = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half, _ = model(x)
    assert torch.isfinite(half).all()
    assert float((half.float() - full).abs().mean() / full.abs().mean()) < 0.05


def test_channels_last_layout_changes_speed_not_results(tmp_path):
    from dlfp.models.stylegan2 import set_channels_last

    model = tiny_gfpgan(seed=14).eval()
    model.fixed_noise = True
    weight = model.stylegan_decoder.style_convs[0].modulated_conv.weight
    assert weight[0].is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fast, fast_rgbs = model(x)
        set_channels_last(model, False)
        assert weight.is_contiguous() and not model.channels_last
        plain, _ = model(x)
    assert fast.is_contiguous() and all(r.is_contiguous() for r in fast_rgbs)
    assert rel_err(fast, plain) < REL_TOL
    saved = torch.load(save_official(set_channels_last(model, True), tmp_path / "m.pth"), weights_only=True)
    assert all(t.is_contiguous() for t in saved["params_ema"].values())


def test_inference_fast_path_equals_training_path():
    model = tiny_gfpgan(seed=15)
    model.fixed_noise = True
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        inference, _ = model(x)
    training, _ = model(x)  # grad enabled: the SFT builds a new tensor instead of modulating in place
    assert training.requires_grad
    assert torch.equal(inference, training.detach())
