"""Facial component discriminator (one each for the left eye, right eye and mouth crops).

Original StyleGAN2 layers (equalised lr, fused-lrelu biases, blur before strided convs) in plain PyTorch;
keys equal shared/reference/state_dicts/facial_component_discriminator.json.
"""

from __future__ import annotations

from torch import Tensor, nn

from dlfp.models.stylegan2 import ConvLayer

FEAT_CHANNELS = (64, 128, 256)


class FacialComponentDiscriminator(nn.Module):
    """VGG-style patch discriminator; the features after conv3 and conv5 feed the component style loss."""

    def __init__(self) -> None:
        super().__init__()
        c1, c2, c3 = FEAT_CHANNELS
        self.conv1 = ConvLayer(3, c1, 3)
        self.conv2 = ConvLayer(c1, c2, 3, downsample=True)
        self.conv3 = ConvLayer(c2, c2, 3)
        self.conv4 = ConvLayer(c2, c3, 3, downsample=True)
        self.conv5 = ConvLayer(c3, c3, 3)
        self.final_conv = ConvLayer(c3, 1, 3, bias=True, activate=False)

    def forward(self, x: Tensor, return_feats: bool = False) -> tuple[Tensor, list[Tensor] | None]:
        """x (B, 3, H, W) -> (patch logits (B, 1, H/4, W/4), features or None).

        Features (with return_feats): [after conv3 (B, 128, H/2, W/2), after conv5 (B, 256, H/4, W/4)].
        """
        feat3 = self.conv3(self.conv2(self.conv1(x)))
        feat5 = self.conv5(self.conv4(feat3))
        out = self.final_conv(feat5)
        return out, ([feat3, feat5] if return_feats else None)
