"""SHIM (issue 15 wave 2 removes it): old import path of dlfp.faces.landmarks."""

from dlfp.faces.landmarks import (  # noqa: F401
    CNN_FALLBACK_MAX_SIDE,
    COMPONENTS,
    Detector,
    FaceBox,
    FaceLandmarker,
    LandmarkError,
    check_landmarks,
    mirror_component_boxes,
    template_5_points,
    template_points,
)
