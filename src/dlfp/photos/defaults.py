"""The own-photos defaults (`dlfp restore INPUT... -o OUTDIR`), defined once.

cli.py shows them in `--help` and photos/pipeline.py runs with them. Standard library and dlfp.layout only, so that
`dlfp --help` does not import torch, OpenCV or dlib.
"""

from __future__ import annotations

from pathlib import Path

from dlfp.layout import GFPGAN_CHECKPOINT

# The train stage's output; the one default for own photos (the official GFPGANv1.4.pth also loads).
DEFAULT_WEIGHTS = Path(GFPGAN_CHECKPOINT)
# The official release files, by the names `--weights` accepts (downloaded once into $DLFP_CACHE/weights).
OFFICIAL_NAMES = {"gfpgan-v1.3": "GFPGANv1.3.pth", "gfpgan-v1.4": "GFPGANv1.4.pth"}

DEFAULT_UPSCALE = 1
DEFAULT_MIN_FACE_SIZE = 24        # detection box side (input px): below it the 68 points are guesses
DEFAULT_MAX_PIXELS = 64_000_000   # OUTPUT pixels (a 4032x3024 phone photo at upscale 2 is 48.8 M)
DEFAULT_BATCH_SIZE = 4
DEFAULT_BACKEND = "auto"          # OpenVINO on the CPU when installed (output within 1e-4 of torch), else torch
# A face whose aligned crop covers more than this x out_size output pixels would come back upsampled by more than
# 1.5x, blurrier than the input: it is left as it is (and reported) unless `force`.
DEFAULT_TOO_LARGE_RATIO = 1.5
DEFAULT_QUALITY = 95              # JPEG/WebP quality of the restored photos
