"""Losses on constructed inputs: known values, signs, gradients, crops."""

from __future__ import annotations

import math

import pytest
import torch

from dlfp.losses.component import boxes_to_rois, component_style_loss, crop_components, crop_sizes
from dlfp.losses.gan import discriminator_loss, generator_loss, lazy_betas, lazy_r1_loss, r1_penalty
from dlfp.losses.identity import identity_loss, load_identity_embedder
from dlfp.losses.perceptual import (
    FeatureNetworkMissingError,
    VGG19Features,
    feature_losses,
    gram_matrix,
    select_feature_network,
)
from dlfp.losses.pixel import l1_loss, pyramid_loss

torch.set_num_threads(1)


def test_l1_known_value() -> None:
    out = torch.tensor([[1.0, -1.0], [0.5, 0.0]])
    target = torch.zeros(2, 2)
    assert l1_loss(out, target).item() == pytest.approx(2.5 / 4)


def test_pyramid_compares_each_level_with_the_resized_target() -> None:
    target = torch.ones(2, 3, 16, 16)
    levels = [torch.zeros(2, 3, 8, 8), torch.full((2, 3, 16, 16), 0.5)]
    # |0 - 1| at 8 px, |0.5 - 1| at 16 px
    assert pyramid_loss(levels, target).item() == pytest.approx(1.0 + 0.5)


def test_pyramid_targets_are_the_gt_halved_step_by_step() -> None:
    """The reference's GT pyramid: each level is the previous one at 0.5x (bilinear), not a direct resize."""
    torch.manual_seed(0)
    target = torch.rand(2, 3, 64, 64) * 2 - 1
    halved = [target]
    while halved[-1].shape[-1] > 8:
        halved.append(torch.nn.functional.interpolate(halved[-1], scale_factor=0.5, mode="bilinear",
                                                      align_corners=False))
    levels = halved[::-1]  # 8, 16, 32, 64 px, as the U-Net's toRGB heads
    assert pyramid_loss(levels, target).item() == 0.0
    direct = [torch.nn.functional.interpolate(target, size=level.shape[-2:], mode="bilinear", align_corners=False)
              for level in levels]
    assert not torch.equal(direct[0], levels[0])
    assert pyramid_loss(direct, target).item() > 0.01
    with pytest.raises(ValueError, match="halved"):
        pyramid_loss([torch.zeros(2, 3, 24, 24)], target)


def test_gram_of_a_known_tensor() -> None:
    features = torch.tensor([[1.0, 2.0], [0.0, 1.0]]).reshape(1, 2, 1, 2)  # c=2, h=1, w=2
    gram = gram_matrix(features)
    expected = torch.tensor([[5.0, 2.0], [2.0, 1.0]]) / (2 * 1 * 2)
    assert torch.allclose(gram[0], expected)


def test_feature_losses_are_zero_for_identical_features_and_weighted_otherwise() -> None:
    a = {"x": torch.ones(1, 2, 3, 3), "y": torch.zeros(1, 2, 2, 2)}
    b = {"x": torch.zeros(1, 2, 3, 3), "y": torch.zeros(1, 2, 2, 2)}
    perceptual, style = feature_losses(a, a, {"x": 1.0, "y": 1.0})
    assert perceptual.item() == 0 and style.item() == 0
    perceptual, style = feature_losses(a, b, {"x": 0.1, "y": 1.0})
    assert perceptual.item() == pytest.approx(0.1)
    # Gram of all-ones (c=2, hw=9) is 9 / 18 = 0.5 everywhere
    assert style.item() == pytest.approx(0.1 * 0.5)


def test_gan_loss_signs_and_values() -> None:
    zero = torch.zeros(4, 1)
    assert generator_loss(zero).item() == pytest.approx(math.log(2))
    assert discriminator_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    # G gains as D scores its fakes higher; D gains as real scores rise and fake scores fall.
    assert generator_loss(torch.full((4, 1), 3.0)) < generator_loss(torch.full((4, 1), -3.0))
    assert discriminator_loss(torch.full((4, 1), 5.0), torch.full((4, 1), -5.0)).item() < 0.02
    fake = torch.zeros(3, 1, requires_grad=True)
    generator_loss(fake).backward()
    assert (fake.grad < 0).all()  # G pushes D(fake) up


def test_r1_penalty_of_a_linear_discriminator() -> None:
    weight = torch.tensor([1.0, -2.0, 3.0])
    images = torch.randn(5, 3, requires_grad=True)
    logits = images @ weight
    penalty = r1_penalty(logits, images)
    assert penalty.item() == pytest.approx(float(weight.pow(2).sum()))  # ||w||^2 = 14
    assert lazy_r1_loss(penalty, gamma=10, interval=16).item() == pytest.approx(10 / 2 * 16 * 14)
    assert lazy_betas((0.0, 0.99), 16) == pytest.approx((0.0, 0.99 ** (16 / 17)))


def test_roi_align_crops_the_bright_box() -> None:
    image = torch.full((2, 3, 64, 64), -1.0)
    image[0, :, 20:30, 10:20] = 1.0  # box centre in pixel indices (14.5, 24.5), half 5
    image[1, :, 40:50, 40:50] = 1.0
    boxes = {"left_eye": torch.tensor([[14.5, 24.5, 5.0], [44.5, 44.5, 5.0]]),
             "right_eye": torch.tensor([[44.5, 44.5, 5.0], [14.5, 24.5, 5.0]]),  # the other sample's square
             "mouth": torch.tensor([[30.0, 50.0, 6.0], [30.0, 10.0, 6.0]])}
    crops = crop_components(image, boxes, {"left_eye": 10, "right_eye": 10, "mouth": 12})
    assert crops["left_eye"].shape == (2, 3, 10, 10)
    assert torch.allclose(crops["left_eye"], torch.ones_like(crops["left_eye"]), atol=1e-5)
    assert crops["right_eye"].max().item() == pytest.approx(-1.0)  # crops come from their own sample
    assert crops["mouth"].max().item() == pytest.approx(-1.0)
    rois = boxes_to_rois(boxes["left_eye"])
    assert rois[1].tolist() == [1.0, 40.0, 40.0, 50.0, 50.0]


def test_crop_sizes_scale_with_resolution() -> None:
    assert crop_sizes(512) == {"left_eye": 80, "right_eye": 80, "mouth": 120}
    assert crop_sizes(256) == {"left_eye": 40, "right_eye": 40, "mouth": 60}
    assert min(crop_sizes(64).values()) >= 8


def test_component_style_loss_weights_the_two_feature_maps() -> None:
    fake = [torch.ones(1, 2, 2, 2), torch.ones(1, 2, 1, 1)]
    real = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 1, 1)]
    # Gram of ones: 4 / 8 = 0.5 and 1 / 2 = 0.5 -> 0.5 * 0.5 + 1.0 * 0.5
    assert component_style_loss(fake, real).item() == pytest.approx(0.75)


def test_identity_loss_is_l1_and_stops_gradients_at_the_target() -> None:
    out = torch.tensor([[1.0, 2.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0]], requires_grad=True)
    loss = identity_loss(out, target)
    assert loss.item() == pytest.approx(1.5)
    loss.backward()
    assert target.grad is None and out.grad is not None


def test_vgg19_is_never_downloaded(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FeatureNetworkMissingError, match="does not download"):
        VGG19Features()
    with pytest.raises(FeatureNetworkMissingError):
        select_feature_network("vgg19")
    assert select_feature_network("off") is None
    assert load_identity_embedder("off") is None


def test_vgg19_features_are_the_pre_relu_conv_outputs() -> None:
    """An explicit pass with non-in-place ReLUs gives the conv outputs the recipe names; ours must equal them."""
    from torchvision.models import vgg19

    from dlfp.losses.perceptual import IMAGENET_MEAN, IMAGENET_STD, VGG19_LAYERS

    torch.manual_seed(0)
    network = vgg19()  # random weights: the layer wiring is what is tested
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    x = ((images + 1) / 2 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = {}
    with torch.no_grad():
        for index, layer in enumerate(network.features[: max(VGG19_LAYERS.values()) + 1]):
            x = torch.relu(x) if isinstance(layer, torch.nn.ReLU) else layer(x)
            expected.update({name: x for name, i in VGG19_LAYERS.items() if i == index})
        features = VGG19Features(network=network)(images)
    assert set(features) == set(VGG19_LAYERS)
    for name, value in expected.items():
        assert isinstance(network.features[VGG19_LAYERS[name]], torch.nn.Conv2d)
        assert value.min() < 0, f"{name}: a pre-ReLU map has negative values"
        assert torch.equal(features[name], value), name


def test_auto_falls_back_to_dlib_features_with_gradients(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    network = select_feature_network("auto")
    assert network is not None and network.name == "dlib"
    images = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    feats = network(images)
    assert set(feats) == set(network.layer_weights)
    perceptual, style = feature_losses(feats, network(images.detach().flip(-1)), network.layer_weights)
    (perceptual + style).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
