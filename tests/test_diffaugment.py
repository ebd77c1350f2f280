"""DiffAugment: each op does what it says, draws only from its own seeded generator, and passes gradients."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from dlfp.params import TrainPriorParams
from dlfp.train.diffaugment import DiffAugment

torch.set_num_threads(1)

N, SIZE = 6, 16  # translation up to 2 px, cutout squares of 8 px


def _images(seed: int = 0) -> torch.Tensor:
    return torch.rand(N, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_empty_policy_is_the_identity_and_unknown_ops_are_rejected() -> None:
    images = _images()
    augment = DiffAugment("", seed=1)
    assert not augment and augment(images) is images
    with pytest.raises(ValueError, match="unknown op.*'rotate'"):
        DiffAugment("color,rotate", seed=1)
    with pytest.raises(ValidationError, match="(?s)diffaugment.*unknown op.*'colour'"):
        TrainPriorParams(diffaugment="colour")
    assert TrainPriorParams(diffaugment=" color, cutout").diffaugment == "color,cutout"


def test_draws_come_from_the_seeded_generator_and_its_state_resumes_the_sequence() -> None:
    policy, images = "color,translation,cutout", _images()
    first, second = DiffAugment(policy, seed=3), DiffAugment(policy, seed=3)
    torch.manual_seed(0)
    a = first(images)
    torch.manual_seed(99)  # the global RNG plays no part
    assert torch.equal(a, second(images)) and a.shape == images.shape
    assert not torch.equal(a, DiffAugment(policy, seed=4)(images))
    saved = first.state_dict()
    following = first(images)
    resumed = DiffAugment(policy, seed=3)
    resumed.load_state_dict(saved)
    assert torch.equal(resumed(images), following) and not torch.equal(following, a)


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_gradients_flow_to_the_input(policy: str) -> None:
    images = _images().requires_grad_(True)
    DiffAugment(policy, seed=5)(images).square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_color_shifts_brightness_and_scales_contrast_and_saturation_in_their_ranges() -> None:
    # A grey image (R = G = B): saturation leaves it alone, so out - mean(out) = contrast * (in - mean(in)) and
    # mean(out) = mean(in) + brightness.
    grey = _images()[:, :1].expand(N, 3, SIZE, SIZE).contiguous()
    out = DiffAugment("color", seed=6)(grey)
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 0], out[:, 2])
    brightness = out.mean(dim=(1, 2, 3)) - grey.mean(dim=(1, 2, 3))
    centred_in = grey - grey.mean(dim=(1, 2, 3), keepdim=True)
    centred_out = out - out.mean(dim=(1, 2, 3), keepdim=True)
    contrast = (centred_out * centred_in).sum(dim=(1, 2, 3)) / centred_in.square().sum(dim=(1, 2, 3))
    assert torch.allclose(centred_out, contrast[:, None, None, None] * centred_in, atol=1e-5)
    assert (brightness.abs() <= 0.5 + 1e-6).all() and ((contrast >= 0.5 - 1e-6) & (contrast <= 1.5 + 1e-6)).all()
    assert brightness.std() > 0 and contrast.std() > 0  # drawn per sample
    # A flat coloured image: only the colour deviation from grey changes, by saturation x contrast in [0, 3].
    flat = torch.tensor([0.6, -0.2, 0.1])[None, :, None, None].expand(N, 3, SIZE, SIZE)
    out = DiffAugment("color", seed=7)(flat)
    deviation_in = flat - flat.mean(dim=1, keepdim=True)
    deviation_out = out - out.mean(dim=1, keepdim=True)
    factor = deviation_out[:, 0, 0, 0] / deviation_in[:, 0, 0, 0]
    assert torch.allclose(deviation_out, factor[:, None, None, None] * deviation_in, atol=1e-5)
    assert ((factor >= -1e-6) & (factor <= 3 + 1e-6)).all() and factor.std() > 0


def test_translation_shifts_content_by_up_to_an_eighth_and_fills_with_zeros() -> None:
    dot = torch.zeros(N, 3, SIZE, SIZE)
    dot[:, :, 8, 8] = 1.0
    out = DiffAugment("translation", seed=8)(dot)
    shifts = []
    for sample in out:
        where = sample[0].nonzero().tolist()
        assert len(where) == 1 and sample.sum() == 3  # the dot moved, unchanged, in every channel
        dy, dx = where[0][0] - 8, where[0][1] - 8
        assert abs(dy) <= SIZE // 8 and abs(dx) <= SIZE // 8
        shifts.append((dy, dx))
    assert len(set(shifts)) > 1 and set(shifts) != {(0, 0)}
    # The same draws on a constant image: the |dy| rows and |dx| columns shifted in from outside are zero.
    ones = DiffAugment("translation", seed=8)(torch.ones(N, 3, SIZE, SIZE))
    for sample, (dy, dx) in zip(ones, shifts, strict=True):
        assert sample.sum() == 3 * (SIZE - abs(dy)) * (SIZE - abs(dx))


def test_cutout_zeroes_one_square_of_half_the_size_clipped_at_the_border() -> None:
    out = DiffAugment("cutout", seed=9)(torch.ones(N, 3, SIZE, SIZE))
    assert set(out.unique().tolist()) == {0.0, 1.0}
    sides = []
    for sample in out:
        assert torch.equal(sample[0], sample[1]) and torch.equal(sample[0], sample[2])
        zero = sample[0] == 0
        rows, cols = zero.any(dim=1).nonzero().flatten(), zero.any(dim=0).nonzero().flatten()
        # one axis-aligned rectangle: every (row, col) pair of its rows and columns is zero, nothing else
        assert zero.sum() == len(rows) * len(cols) and zero[rows[:, None], cols[None, :]].all()
        assert torch.equal(rows, torch.arange(rows[0], rows[-1] + 1))
        assert torch.equal(cols, torch.arange(cols[0], cols[-1] + 1))
        assert SIZE // 4 <= len(rows) <= SIZE // 2 and SIZE // 4 <= len(cols) <= SIZE // 2  # centre inside
        sides.append((len(rows), len(cols), int(rows[0]), int(cols[0])))
    assert len(set(sides)) > 1
