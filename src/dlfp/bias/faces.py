"""One face at a time: the GT's groups and skin mask (FaceTone), and a restored face's tone shift against it.

Groups come from the ground truth only: the ITA band with the configured correction, Thong et al.'s lightness
and hue categories, and the FFHQ labels. Faces whose GT tone cannot be measured are "not measured" and stay in
every table. Also the dataset composition (counts per split and grouping). Works on decoded arrays; may import
dlfp.bias.{skin,mask,labels} and dlfp.params.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dlfp.bias import skin
from dlfp.bias.labels import UNKNOWN, age_group, ffhq_id_of
from dlfp.bias.mask import eye_mask, skin_mask
from dlfp.params import BiasParams

NOT_MEASURED = "not measured"   # GT without landmarks or with too little skin: no tone, still in every table
TONE_CATEGORIES = (*skin.ALL_GROUPS, NOT_MEASURED)


@dataclass
class FaceTone:
    """What the GT of one face gives the analysis: its groups, and the mask that every shift is measured on."""

    sample_id: str
    ffhq_id: int | None
    split: str
    band: str                         # grouping measurement (with the configured correction), unmerged
    band_plain: str                   # the same without correction, for the composition comparison
    ita_plain: float | None
    lightness: str
    hue: str
    gender: str
    age: float | None
    age_group: str
    measured: skin.ToneMeasurement | None = None
    recipe: skin.ToneRecipe | None = field(default=None, repr=False)   # replayed on the restored face (flips)
    problem: str = ""
    mask: np.ndarray | None = field(default=None, repr=False)
    eyes: np.ndarray | None = field(default=None, repr=False)
    landmarks: np.ndarray | None = field(default=None, repr=False)


def measure_gt(sample_id: str, meta: Mapping, gt: np.ndarray, split: str, options: BiasParams,
               labels: Mapping[int, Mapping[str, object]]) -> FaceTone:
    """Group one GT face: tone from its stored landmarks (never from a restored image), labels by ffhq_id."""
    ffhq_id = ffhq_id_of(meta)
    label = labels.get(ffhq_id, {}) if ffhq_id is not None else {}
    age = label.get("age")
    face = FaceTone(sample_id, ffhq_id, split, NOT_MEASURED, NOT_MEASURED, None, NOT_MEASURED, NOT_MEASURED,
                    str(label.get("gender", UNKNOWN)), age, age_group(age, options.age_bins))  # type: ignore[arg-type]
    landmarks = meta.get("landmarks")
    if landmarks is None:
        face.problem = "no stored landmarks"
        return face
    try:
        points = np.asarray(landmarks, dtype=np.float64)
        mask = skin_mask(points, gt.shape[:2])
        eyes = eye_mask(points, gt.shape[:2])
        recipe = skin.tone_recipe(gt, mask, options.correction, eyes=eyes)
        measured = skin.replay_tone(gt, mask, recipe)
        plain = skin.measure_tone(gt, mask)
    except (skin.NoSkinError, ValueError) as error:
        face.problem = str(error)
        return face
    face.measured, face.recipe, face.mask, face.eyes, face.landmarks = measured, recipe, mask, eyes, points
    face.band, face.band_plain, face.ita_plain = measured.band, plain.band, plain.ita_deg
    if not measured.no_colour:
        face.lightness = skin.lightness_category(measured.l_star)
        face.hue = skin.hue_category(measured.hue_deg)
    else:
        face.lightness = face.hue = skin.NO_COLOUR
    return face


def composition(faces: Mapping[str, FaceTone], bins: Mapping[str, tuple[float, float]]) -> pd.DataFrame:
    """Counts and shares per split and grouping; every category listed, also when empty."""
    orders = {"skin_tone": TONE_CATEGORIES, "skin_tone_plain": TONE_CATEGORIES,
              "lightness": ("light", "dark", skin.NO_COLOUR, NOT_MEASURED),
              "hue": ("yellow", "red", skin.NO_COLOUR, NOT_MEASURED), "age": (*bins, UNKNOWN)}
    attributes = {"skin_tone": "band", "skin_tone_plain": "band_plain", "lightness": "lightness", "hue": "hue",
                  "gender": "gender", "age": "age_group"}
    rows = []
    splits = sorted({face.split for face in faces.values()}, key=lambda s: ("train", "val", "test").index(s)
                    if s in ("train", "val", "test") else 3)
    for split in splits:
        members = [face for face in faces.values() if face.split == split]
        for grouping, attribute in attributes.items():
            counts = Counter(str(getattr(face, attribute)) for face in members)
            order = list(orders.get(grouping, sorted(counts)))
            order += [name for name in sorted(counts) if name not in order]
            for group in order:
                rows.append({"split": split, "grouping": grouping, "group": group, "count": counts.get(group, 0),
                             "share": counts.get(group, 0) / len(members) if members else math.nan})
    return pd.DataFrame(rows, columns=["split", "grouping", "group", "count", "share"])


def face_shift(gt: np.ndarray, restored: np.ndarray, face: FaceTone) -> tuple[dict, skin.ToneShift]:
    """Shift columns of one restored face against its measured GT: plain on the GT mask for dITA, dL*, dE,
    and the restored band read with the GT's own correction (same gains, same pixels) for the flip matrix."""
    if face.measured is None or face.recipe is None or face.mask is None:
        raise ValueError(f"{face.sample_id}: the GT tone was not measured ({face.problem})")
    shift = skin.tone_shift(gt, restored, face.mask)
    regrouped = skin.replay_tone(restored, face.mask, face.recipe)
    return {"ita_restored": shift.restored.ita_deg, "band_restored": regrouped.band, "d_ita": shift.d_ita,
            "d_l_star": shift.d_l_star, "d_a_star": shift.d_a_star, "d_b_star": shift.d_b_star,
            "delta_e": shift.delta_e, "ita_gt_uncorrected": shift.gt.ita_deg,
            "colour_lost": shift.colour_lost}, shift
