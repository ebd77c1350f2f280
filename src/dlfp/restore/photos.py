"""SHIM (issue 15 wave 2 removes it): old import path of dlfp.photos (pipeline, inputs, detection, summary).

Re-exports what cli.py and benchmarks/bench_restore_photos.py use. Tests patch the real modules, not this one.
"""

from dlfp.photos.detection import HOG_DETECT_MAX_SIDE, HOG_UPSAMPLE, _scaled_for_detection
from dlfp.photos.inputs import IMAGE_SUFFIXES, PhotosUsageError, decode_photo
from dlfp.photos.pipeline import DEFAULT_MAX_PIXELS, WeightsNotFoundError, exit_code, run_photos
from dlfp.photos.summary import STATUS_FAILED, SUMMARY_COLUMNS

__all__ = ["DEFAULT_MAX_PIXELS", "HOG_DETECT_MAX_SIDE", "HOG_UPSAMPLE", "IMAGE_SUFFIXES", "STATUS_FAILED",
           "SUMMARY_COLUMNS", "PhotosUsageError", "WeightsNotFoundError", "_scaled_for_detection", "decode_photo",
           "exit_code", "run_photos"]
