"""Bias library: skin tone from pixels (skin.py) and per-group statistics (stats.py).

See ../shared/docs/bias-method.md. The `bias` stage wires these functions; they take plain arrays.
"""

from dlfp.bias.skin import (
    ALL_GROUPS,
    BAND_ORDER,
    DEFAULT_CORRECTION,
    NO_COLOUR,
    NoSkinError,
    ToneMeasurement,
    ToneShift,
    eye_mask,
    hue_category,
    ita_band,
    lightness_category,
    measure_face,
    measure_tone,
    skin_mask,
    tone_shift,
)
from dlfp.bias.stats import (
    Gap,
    Grouping,
    Interval,
    bootstrap_ci,
    failure_rates,
    flip_matrix,
    group_gap,
    group_summary,
    holm,
    merge_small_groups,
    tone_shift_tests,
)

__all__ = [
    "ALL_GROUPS",
    "BAND_ORDER",
    "DEFAULT_CORRECTION",
    "NO_COLOUR",
    "Gap",
    "Grouping",
    "Interval",
    "NoSkinError",
    "ToneMeasurement",
    "ToneShift",
    "bootstrap_ci",
    "eye_mask",
    "failure_rates",
    "flip_matrix",
    "group_gap",
    "group_summary",
    "holm",
    "hue_category",
    "ita_band",
    "lightness_category",
    "measure_face",
    "measure_tone",
    "merge_small_groups",
    "skin_mask",
    "tone_shift",
    "tone_shift_tests",
]
