"""Networks: dlib model files, the identity network, StyleGAN2 and GFP-GAN.

The model classes are imported lazily so that data stages importing `dlfp.models.dlib_files` do not pay for
importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dlfp.models.gfpgan import GFPGANv1Clean
    from dlfp.models.stylegan2 import StyleGAN2GeneratorClean

__all__ = ["GFPGANv1Clean", "StyleGAN2GeneratorClean"]


def __getattr__(name: str) -> object:
    if name == "GFPGANv1Clean":
        from dlfp.models.gfpgan import GFPGANv1Clean

        return GFPGANv1Clean
    if name == "StyleGAN2GeneratorClean":
        from dlfp.models.stylegan2 import StyleGAN2GeneratorClean

        return StyleGAN2GeneratorClean
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
