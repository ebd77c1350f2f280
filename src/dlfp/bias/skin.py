"""Skin tone from pixels: ITA / L* / hue of a masked face (mask: dlfp.bias.mask), and the restored-vs-GT shift.

Method (../shared/docs/bias-method.md): sRGB -> CIELAB (D65, float, skimage), trim highlights and shadows by
L* percentile, take the median L*, a*, b* of the remaining skin pixels and compute ONE ITA from the medians
(per-pixel ITA is unstable where b* is near 0). Photos without colour get the "no colour" group, never a band.

Plain ITA mixes lighting with skin tone, so the measurement can first correct for illumination:
- "sclera": white-balance the face against the eye whites (bright, low-chroma pixels inside the eye polygons)
  when enough of them are found; fixes colour casts (warm light raises b* and lowers ITA).
- "brightest": keep the brightest k-means clusters of skin pixels (Thong et al., ICCV 2023), which drops
  the shaded part of the face.
- "both" (the default for grouping): sclera white balance (when possible), then brightest clusters.
Which corrections were really applied is recorded in ToneMeasurement.correction. On the 1,133 shared
aligned_hq faces with landmarks, "both" raised ITA by a median 14 deg (the best-lit skin reads lighter than
the plain median, so band counts move lightwards: dark 67 -> 17, very light 256 -> 453); in a montage of 10
random "dark" faces, 6 had dark skin with "both" against 4 with plain ITA. The sclera balance applied on 878.

The restored-vs-GT shift is measured WITHOUT illumination correction, on the GT mask: the pair shares the
lighting, and a colour cast introduced by the restorer is exactly what the shift must show.

ITA is defined only where the skin has colour: with b* <= 0, atan2(L* - 50, b*) lands at or beyond +-90 deg
and says nothing about tone. Such faces (and those with chroma below NO_COLOUR_CHROMA) are "no colour", never
in a band. A restored face that lost the GT's colour is "colour lost": its dITA is undefined (NaN), not a
lightening.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy.cluster.vq import kmeans2
from skimage.color import deltaE_ciede2000, lab2rgb, rgb2lab

# ------------------------------------------------------------------------------------ tone measurement
TRIM_LOW_PERCENTILE = 5.0       # L* below this percentile of the mask: shadows, pores, stray hair
TRIM_HIGH_PERCENTILE = 95.0     # L* above: specular highlights
NO_COLOUR_CHROMA = 3.0          # chroma sqrt(a*^2 + b*^2) of the median below this: a greyscale photo
                                # (and b* <= 0 at any chroma: ITA undefined)
MIN_SKIN_PIXELS = 50            # fewer usable pixels: no measurement

# Thong et al. (ICCV 2023), "Beyond Skin Tone": keep the brightest clusters of skin pixels.
CLUSTERS = 5
MIN_CLUSTER_SHARE = 0.08        # the reference (brightest) cluster must hold this share: not a highlight
LIT_RANGE_L = 8.0               # clusters within this many L* of the reference count as lit (a shadow at
                                # half the light is about 15-20 L* darker)
KMEANS_SEED = 0

# Sclera (eye-white) reference for white balance.
SCLERA_TOP_L_SHARE = 0.35       # brightest share of the eye-polygon pixels ...
SCLERA_LOW_CHROMA_SHARE = 0.5   # ... and of those the least colourful half
SCLERA_MIN_L = 35.0             # darker "whites" are lashes or shade: no reference
SCLERA_MIN_PIXELS = 12          # fewer: no white balance (recorded)
SCLERA_MAX_GAIN = 2.0           # channel gains beyond this are not believable as a cast
# Eye whites are not neutral: the median sclera colour over the 788 shared aligned_hq faces where one was
# found was a* 5.0, b* 3.3. Balancing towards it (not to grey) corrects only a face's deviation from typical
# eye whites. Sclera b* correlates with cheek b* (r = 0.58), so the deviation is mostly a colour cast.
SCLERA_REFERENCE_AB = (5.0, 3.3)

# Thong et al. categories.
DARK_L_STAR = 60.0              # L* < 60: dark
RED_HUE_DEG = 55.0              # h* < 55 deg: red

# ITA bands (Chardon 1991, Del Bino 2006): (name, lower edge exclusive); the last band has no lower edge.
NO_COLOUR = "no colour"
ITA_BANDS: tuple[tuple[str, float], ...] = (
    ("very light", 55.0),
    ("light", 41.0),
    ("intermediate", 28.0),
    ("tan", 10.0),
    ("brown", -30.0),
    ("dark", -math.inf),
)
BAND_ORDER: tuple[str, ...] = tuple(name for name, _ in ITA_BANDS)
ALL_GROUPS: tuple[str, ...] = (*BAND_ORDER, NO_COLOUR)

Correction = Literal["none", "sclera", "brightest", "both"]
DEFAULT_CORRECTION: Correction = "both"


# ----------------------------------------------------------------------------------- colour helpers
def to_lab(rgb_uint8: np.ndarray) -> np.ndarray:
    """sRGB uint8 (..., 3) -> CIELAB D65 float (..., 3), computed in float (not OpenCV's 8-bit Lab)."""
    rgb = np.asarray(rgb_uint8, dtype=np.float64) / 255.0
    return rgb2lab(rgb.reshape(-1, 1, 3)).reshape(rgb.shape)


def _pixels_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) sRGB floats in [0, 1] -> (N, 3) CIELAB."""
    return rgb2lab(rgb.reshape(-1, 1, 3)).reshape(-1, 3)


def lacks_colour(a_star: float, b_star: float) -> bool:
    """No usable colour: chroma below NO_COLOUR_CHROMA, or b* <= 0 where ITA = atan2(L* - 50, b*) is undefined."""
    return bool(b_star <= 0 or math.hypot(a_star, b_star) < NO_COLOUR_CHROMA)


def ita_deg(l_star: float, b_star: float) -> float:
    """Individual Typology Angle in degrees: atan2(L* - 50, b*); higher is lighter."""
    return math.degrees(math.atan2(l_star - 50.0, b_star))


def hue_deg(a_star: float, b_star: float) -> float:
    """CIELAB hue angle h* = atan2(b*, a*) in degrees."""
    return math.degrees(math.atan2(b_star, a_star))


def _srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    return np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)


# --------------------------------------------------------------------------------- illumination fixes
def sclera_gains(image_rgb_uint8: np.ndarray, eyes: np.ndarray) -> np.ndarray | None:
    """Per-channel linear-RGB gains that move the eye whites to the reference sclera colour, or None.

    The reference is taken at the sclera's own L*, so the correction fixes colour casts, not exposure.

    Sclera = the brightest pixels inside the eye polygons, then the least colourful half of them. None when
    fewer than SCLERA_MIN_PIXELS qualify, when they are too dark, or when the gains are not believable.
    """
    pixels = image_rgb_uint8[eyes].astype(np.float64) / 255.0
    if len(pixels) < SCLERA_MIN_PIXELS:
        return None
    lab = _pixels_to_lab(pixels)
    bright = lab[:, 0] >= np.quantile(lab[:, 0], 1.0 - SCLERA_TOP_L_SHARE)
    chroma = np.hypot(lab[:, 1], lab[:, 2])
    low_chroma = bright & (chroma <= np.quantile(chroma[bright], SCLERA_LOW_CHROMA_SHARE))
    sclera = low_chroma & (lab[:, 0] >= SCLERA_MIN_L)
    if sclera.sum() < SCLERA_MIN_PIXELS:
        return None
    white = np.median(_srgb_to_linear(pixels[sclera]), axis=0)
    if np.any(white <= 0):
        return None
    white_l = float(rgb2lab(_linear_to_srgb(white).reshape(1, 1, 3))[0, 0, 0])
    reference = lab2rgb(np.array([[[white_l, *SCLERA_REFERENCE_AB]]])).reshape(3)
    gains = _srgb_to_linear(reference) / white
    if gains.max() / gains.min() > SCLERA_MAX_GAIN:
        return None
    return gains


def apply_gains(rgb: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """White-balance sRGB values in [0, 1] (N, 3) by linear-light channel gains (von Kries)."""
    return _linear_to_srgb(_srgb_to_linear(rgb) * gains)


def brightest_clusters(lab: np.ndarray, seed: int = KMEANS_SEED) -> np.ndarray:
    """Boolean selection of the best-lit skin: k-means clusters (in Lab) near the brightest substantial one.

    Thong et al.: shade lowers L* and shifts hue, so the best-lit skin is the sturdier estimate of the skin.
    The reference is the brightest cluster holding >= MIN_CLUSTER_SHARE of the pixels (small bright clusters
    are highlights); every cluster whose mean L* is within LIT_RANGE_L of it is kept, however small the
    lit part of the face is.
    """
    k = min(CLUSTERS, len(np.unique(np.round(lab, 3), axis=0)))   # no more clusters than distinct colours
    if k < 2:
        return np.ones(len(lab), bool)
    centroids, labels = kmeans2(lab, k, minit="++", seed=np.random.default_rng(seed))
    shares = np.bincount(labels, minlength=k) / len(lab)
    substantial = np.flatnonzero(shares >= MIN_CLUSTER_SHARE)
    reference_l = centroids[substantial, 0].max() if len(substantial) else centroids[:, 0].max()
    keep = centroids[:, 0] >= reference_l - LIT_RANGE_L
    return keep[labels]


# ------------------------------------------------------------------------------------- measurement
@dataclass(frozen=True)
class ToneMeasurement:
    """Skin tone of one face: medians over the trimmed mask and the ITA / hue computed from them."""

    ita_deg: float
    l_star: float
    a_star: float
    b_star: float
    hue_deg: float
    chroma: float
    n_pixels: int
    no_colour: bool
    correction: str = "none"   # what was really applied: "none", "sclera", "brightest", "sclera+brightest"

    @property
    def band(self) -> str:
        """ITA band, or "no colour"."""
        return ita_band(self.ita_deg, self.no_colour)

    def as_dict(self) -> dict[str, float | int | bool | str]:
        return {**asdict(self), "band": self.band}


class NoSkinError(ValueError):
    """The mask holds too few usable skin pixels to measure a tone."""


def within_trim(lab: np.ndarray) -> np.ndarray:
    """Boolean selection of the pixels whose L* lies within the trim percentiles (no shadows, no highlights)."""
    low, high = np.percentile(lab[:, 0], [TRIM_LOW_PERCENTILE, TRIM_HIGH_PERCENTILE])
    return (lab[:, 0] >= low) & (lab[:, 0] <= high)


def summarise_lab(lab: np.ndarray, correction: str = "none", no_colour: bool | None = None) -> ToneMeasurement:
    """ToneMeasurement from the (already selected) Lab pixels: medians first, then one ITA and one hue.

    no_colour defaults to lacks_colour on these pixels; measure_tone passes the verdict of the uncorrected
    pixels, since the brightest clusters of pale, over-exposed skin are nearly white. Medians with b* <= 0 are
    "no colour" in any case: their ITA is undefined.
    """
    l_star, a_star, b_star = (float(v) for v in np.median(lab, axis=0))
    chroma = math.hypot(a_star, b_star)
    if no_colour is None:
        no_colour = lacks_colour(a_star, b_star)
    return ToneMeasurement(
        ita_deg=ita_deg(l_star, b_star), l_star=l_star, a_star=a_star, b_star=b_star,
        hue_deg=hue_deg(a_star, b_star), chroma=chroma, n_pixels=len(lab),
        no_colour=bool(no_colour or b_star <= 0), correction=correction,
    )


@dataclass(frozen=True)
class ToneRecipe:
    """How one face's tone was read: the white-balance gains and which mask pixels were kept.

    Replaying the GT's recipe on the pixel-aligned restored face (replay_tone) measures both with the SAME
    correction, so a band flip shows what the restorer changed, not a sclera balance that failed on blurred eyes.
    """

    gains: np.ndarray | None          # linear-RGB channel gains (sclera balance) or None
    plain_kept: np.ndarray            # bool over the mask pixels: the plain trim, where "no colour" is judged
    kept: np.ndarray                  # bool over the mask pixels: what the (corrected) medians are taken over
    applied: str                      # "none", "sclera", "brightest" or "sclera+brightest"


def _mask_pixels(image_rgb_uint8: np.ndarray, mask: np.ndarray) -> np.ndarray:
    rgb = np.asarray(image_rgb_uint8)[np.asarray(mask, bool)].astype(np.float64) / 255.0
    if len(rgb) < MIN_SKIN_PIXELS:
        raise NoSkinError(f"only {len(rgb)} skin pixels in the mask (need {MIN_SKIN_PIXELS})")
    return rgb


def tone_recipe(image_rgb_uint8: np.ndarray, mask: np.ndarray, correction: Correction = "none",
                eyes: np.ndarray | None = None, seed: int = KMEANS_SEED) -> ToneRecipe:
    """Decide the correction of one face: sclera gains (needs `eyes`) and the kept pixels; see measure_tone."""
    if correction not in ("none", "sclera", "brightest", "both"):
        raise ValueError(f"unknown correction {correction!r}")
    rgb = _mask_pixels(image_rgb_uint8, mask)
    applied: list[str] = []
    lab = _pixels_to_lab(rgb)
    plain_kept = kept = within_trim(lab)
    gains = None
    if correction in ("sclera", "both"):
        if eyes is None:
            raise ValueError("sclera correction needs the eye mask (see eye_mask)")
        gains = sclera_gains(np.asarray(image_rgb_uint8), np.asarray(eyes, bool))
        if gains is not None:
            lab = _pixels_to_lab(apply_gains(rgb, gains))
            kept = within_trim(lab)
            applied.append("sclera")
    if correction in ("brightest", "both"):
        candidates = np.flatnonzero(kept)
        kept = np.zeros(len(lab), bool)
        kept[candidates[brightest_clusters(lab[candidates], seed)]] = True
        applied.append("brightest")
    return ToneRecipe(gains, plain_kept, kept, "+".join(applied) or "none")


def replay_tone(image_rgb_uint8: np.ndarray, mask: np.ndarray, recipe: ToneRecipe) -> ToneMeasurement:
    """Tone of the masked pixels read with a given recipe (the same gains, the same kept pixels)."""
    rgb = _mask_pixels(image_rgb_uint8, mask)
    if len(rgb) != len(recipe.kept):
        raise ValueError(f"the mask holds {len(rgb)} pixels, the recipe {len(recipe.kept)}: not the same mask")
    lab = _pixels_to_lab(rgb)
    _, a_star, b_star = np.median(lab[recipe.plain_kept], axis=0)
    no_colour = lacks_colour(a_star, b_star)        # a property of the photo: judged uncorrected
    if recipe.gains is not None:
        lab = _pixels_to_lab(apply_gains(rgb, recipe.gains))
    return summarise_lab(lab[recipe.kept], recipe.applied, no_colour)


def measure_tone(image_rgb_uint8: np.ndarray, mask: np.ndarray, correction: Correction = "none",
                 eyes: np.ndarray | None = None, seed: int = KMEANS_SEED) -> ToneMeasurement:
    """Skin tone of the masked pixels of an 8-bit RGB image.

    correction: "none" (plain method, used for shifts), "sclera" (needs `eyes`, the eye-polygon mask),
    "brightest" or "both". Sclera balance silently falls back to none when no eye white is found; the
    result's `correction` says what was applied. Raises NoSkinError when the mask is (nearly) empty.
    """
    return replay_tone(image_rgb_uint8, mask, tone_recipe(image_rgb_uint8, mask, correction, eyes, seed))


# ------------------------------------------------------------------------------------------ groups
def ita_band(ita: float, no_colour: bool = False) -> str:
    """One of the six ITA bands (BAND_ORDER, light to dark), or "no colour".

    Also "no colour" for a NaN ITA and for |ITA| >= 90 deg, which only b* <= 0 gives (ITA undefined).
    """
    if no_colour or ita is None or not math.isfinite(ita) or abs(ita) >= 90.0:
        return NO_COLOUR
    for name, lower in ITA_BANDS:
        if ita > lower:
            return name
    return ITA_BANDS[-1][0]


def lightness_category(l_star: float) -> str:
    """Thong et al.: "dark" when L* < 60, else "light"."""
    return "dark" if l_star < DARK_L_STAR else "light"


def hue_category(hue: float) -> str:
    """Thong et al.: "red" when h* < 55 deg, else "yellow"."""
    return "red" if hue < RED_HUE_DEG else "yellow"


# -------------------------------------------------------------------------------------------- shift
@dataclass(frozen=True)
class ToneShift:
    """Restored minus GT on the same (GT) mask; positive d_ita = lightened.

    d_ita is NaN when either face has no colour (ITA undefined); colour_lost marks a restored face that lost
    the colour its GT had: a desaturation, counted on its own, never read as a lightening.

    delta_e is the median over mask pixels of the per-pixel CIEDE2000 between GT and restored (pixel-aligned
    pair), not the CIEDE2000 of the two medians; delta_e_of_medians gives the latter.
    """

    d_ita: float
    d_l_star: float
    d_a_star: float
    d_b_star: float
    delta_e: float
    delta_e_of_medians: float
    gt: ToneMeasurement
    restored: ToneMeasurement

    @property
    def colour_lost(self) -> bool:
        return not self.gt.no_colour and self.restored.no_colour

    def as_dict(self) -> dict[str, float]:
        return {"d_ita": self.d_ita, "colour_lost": self.colour_lost, "d_l_star": self.d_l_star,
                "d_a_star": self.d_a_star,
                "d_b_star": self.d_b_star, "delta_e": self.delta_e,
                "delta_e_of_medians": self.delta_e_of_medians,
                "ita_gt": self.gt.ita_deg, "ita_restored": self.restored.ita_deg}


def tone_shift(gt_rgb_uint8: np.ndarray, restored_rgb_uint8: np.ndarray, gt_mask: np.ndarray) -> ToneShift:
    """Appearance shift of a restored face against its GT, both measured plainly on the GT mask."""
    if np.shape(gt_rgb_uint8) != np.shape(restored_rgb_uint8):
        raise ValueError(f"GT {np.shape(gt_rgb_uint8)} and restored {np.shape(restored_rgb_uint8)} differ")
    gt = measure_tone(gt_rgb_uint8, gt_mask)
    restored = measure_tone(restored_rgb_uint8, gt_mask)
    mask = np.asarray(gt_mask, bool)
    gt_lab = to_lab(np.asarray(gt_rgb_uint8)[mask])
    per_pixel = deltaE_ciede2000(gt_lab, to_lab(np.asarray(restored_rgb_uint8)[mask]))
    medians = [np.array([m.l_star, m.a_star, m.b_star]) for m in (gt, restored)]
    defined = not (gt.no_colour or restored.no_colour)
    return ToneShift(
        d_ita=restored.ita_deg - gt.ita_deg if defined else math.nan, d_l_star=restored.l_star - gt.l_star,
        d_a_star=restored.a_star - gt.a_star, d_b_star=restored.b_star - gt.b_star,
        delta_e=float(np.median(per_pixel)), delta_e_of_medians=float(deltaE_ciede2000(*medians)),
        gt=gt, restored=restored,
    )
