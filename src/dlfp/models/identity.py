"""SHIM (issue 15 wave 2 removes it): old import path of dlfp.models.dlib_resnet, dlfp.models.arcface,
dlfp.models.weights_cache, dlfp.faces.chips and dlfp.metrics.identity."""

from dlfp.faces.chips import dlib_face_chips
from dlfp.metrics.identity import identity_distance, match_rate
from dlfp.models.arcface import arcface_weights_path, load_arcface
from dlfp.models.dlib_resnet import MATCH_THRESHOLD, convert_dlib_resnet, face_descriptor, load_dlib_resnet
from dlfp.models.weights_cache import CACHE_ENV, cache_dir

__all__ = ["CACHE_ENV", "MATCH_THRESHOLD", "arcface_weights_path", "cache_dir", "convert_dlib_resnet",
           "dlib_face_chips", "face_descriptor", "identity_distance", "load_arcface", "load_dlib_resnet",
           "match_rate"]
