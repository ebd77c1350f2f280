"""Locate the dlib model files shipped by the face-recognition-models package.

`import face_recognition_models` breaks on current setuptools (it imports pkg_resources), so the package
folder is found through importlib's spec without importing it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "face_recognition_models"
LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"
LANDMARKS_5 = "shape_predictor_5_face_landmarks.dat"
FACE_RECOGNITION_RESNET = "dlib_face_recognition_resnet_model_v1.dat"
CNN_FACE_DETECTOR = "mmod_human_face_detector.dat"


class DlibModelMissingError(FileNotFoundError):
    """A dlib model file is not installed."""


def dlib_model_path(filename: str) -> Path:
    """Path of one of the model files; a clear error says how to install it when it is missing."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DlibModelMissingError(
            f"{filename}: the package face-recognition-models is not installed; "
            "run `pip install face-recognition-models` (or `make venv`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / filename
    if not path.is_file():
        raise DlibModelMissingError(f"{path}: dlib model file missing from face-recognition-models; reinstall it")
    return path
