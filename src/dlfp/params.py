"""The typed schema of params.yaml: one section per stage, validated once at start-up.

Every stage entry receives a validated `Params` object and passes plain values from it to library code;
nothing below the stage entries reads configuration dicts.

One module of about 500 lines on purpose: it is the whole of params.yaml, one small pydantic class per section, so
one file shows every key with its default, range and check; the sections are built from each other (train_prior
and train extend `OptimParams`, degrade's presets are `DegradationParams`), and `Params` joins them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dlfp.layout import GFPGAN_CHECKPOINT

DEFAULT_PARAMS_PATH = Path("params.yaml")
DIFFAUGMENT_OPS = ("color", "translation", "cutout")  # dlfp.train.diffaugment


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the key and the reason."""


class _Section(BaseModel):
    # A misspelt key is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


Range = Annotated[tuple[float, float], Field(description="closed interval [low, high]")]


def diffaugment_policy(policy: str) -> tuple[str, ...]:
    """'color,translation,cutout' -> its op names in order; '' -> (); an unknown name is an error."""
    names = tuple(name.strip() for name in policy.split(",") if name.strip())
    unknown = [name for name in names if name not in DIFFAUGMENT_OPS]
    if unknown:
        raise ValueError(f"DiffAugment policy {policy!r}: unknown op(s) {unknown}; known: {', '.join(DIFFAUGMENT_OPS)}")
    return names


def _check_range(name: str, value: tuple[float, float]) -> tuple[float, float]:
    low, high = value
    if low > high:
        raise ValueError(f"{name}: low {low} is above high {high}")
    return value


# --------------------------------------------------------------------------------------------- acquire
class ParquetMirror(_Section):
    """A Hugging Face-style parquet copy of FFHQ: shards of rows (image bytes + optional id)."""

    url_template: str = Field(
        description="URL with {index} (shard number), e.g. .../train-{index:05d}-of-00015.parquet")
    num_shards: int = Field(gt=0)
    rows_per_shard: int | None = Field(default=None, gt=0, description="rows per shard, to fetch only needed ones")
    image_column: str = "image"
    id_column: str | None = None
    md5: dict[int, str] = Field(default_factory=dict, description="optional md5 per shard index")
    fetch: Literal["shards", "row_groups"] = Field(
        default="shards", description="shards: whole files; row_groups: only the byte ranges of the needed row groups")
    variant: Literal["thumbs", "images"] | None = Field(
        default=None, description="the FFHQ variant whose exact pixels the rows hold: rows are then checked against "
        "the metadata's pixel_md5 (data.source ffhq); null for resized mirrors, which the metadata does not describe")


FFHQ_METADATA_MD5 = "425ae20f06a4da1d4dc0f46d40ba5fd6"  # the official ffhq-dataset-v2.json
FFHQ_METADATA_BYTES = 267_793_842


class FFHQSource(_Section):
    metadata_url: str = "https://drive.google.com/uc?id=16N0RV4fHI6joBuKbQAoG34V_cQk7vxSA"
    metadata_md5: str | None = Field(
        default=FFHQ_METADATA_MD5, description="pinned md5 of the official ffhq-dataset-v2.json; a mirror serving "
        "other bytes sets its own (or null) explicitly")
    metadata_size: int | None = Field(
        default=FFHQ_METADATA_BYTES, gt=0, description="size of the metadata JSON: a larger download is aborted")
    max_file_bytes: int = Field(
        default=4 << 30, gt=0, description="cap on any other FFHQ download whose size the metadata does not give")
    variant: Literal["thumbs", "images"] = Field(
        default="thumbs", description="thumbs: 128 px PNG thumbnails; images: 1024 px aligned PNGs"
    )
    id_range: tuple[int, int] | None = Field(default=None, description="half-open FFHQ id range [start, stop)")
    url_template: str | None = Field(
        default=None, description="mirror per-file URL, e.g. https://mirror/{variant}/{id:05d}.png; overrides file_url"
    )
    parquet: ParquetMirror | None = None
    retries: int = Field(default=5, ge=0)
    backoff_s: float = Field(default=1.0, ge=0)
    timeout_s: float = Field(default=60.0, gt=0)

    @field_validator("id_range")
    @classmethod
    def _id_range_ordered(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not (0 <= value[0] < value[1] <= 70000):
            raise ValueError(f"must satisfy 0 <= start < stop <= 70000, got {list(value)}")
        return value


# merkol/ffhq-256 as the dataset viewer serves it: 15 parquet files of ~4667 aligned 256 px FFHQ faces each, in id
# order, in row groups of about 100 rows, so a 1,200-face subset is ~12 row groups of the first file.
DEFAULT_MIRROR_URL = ("https://huggingface.co/datasets/merkol/ffhq-256/resolve/refs%2Fconvert%2Fparquet/"
                      "default/train/{index:04d}.parquet")


class FallbackSource(_Section):
    """What `data.source: auto` downloads when `data.folder` does not exist."""

    count: int = Field(default=1200, gt=0, description="faces fetched when data.count is null")
    parquet: ParquetMirror = ParquetMirror(url_template=DEFAULT_MIRROR_URL, num_shards=15, rows_per_shard=4667,
                                           fetch="row_groups")
    probe_timeout_s: float = Field(default=5.0, gt=0, description="first connection attempt; offline fails fast")


class DataParams(_Section):
    source: Literal["auto", "folder", "ffhq"] = Field(
        default="folder", description="auto: data.folder when it exists, else data.fallback (an FFHQ download)")
    folder: str | None = Field(default=None, description="folder, .zip or .tar of images (source: folder)")
    count: int | None = Field(default=None, gt=0, description="keep only the first N images in id order")
    size: int = Field(default=256, ge=64, le=1024, description="side of the aligned faces in pixels")
    cache_dir: str = Field(default="data/downloads", description="where downloads are cached between runs")
    max_pixels: int = Field(default=100_000_000, gt=0, description="larger images are rejected, not decoded")
    ffhq: FFHQSource = FFHQSource()
    fallback: FallbackSource = FallbackSource()

    @model_validator(mode="after")
    def _folder_given(self) -> DataParams:
        if self.source == "folder" and not self.folder:
            raise ValueError("data.folder must be set when data.source is 'folder'")
        if self.size & (self.size - 1):
            raise ValueError(f"data.size must be a power of two (64..1024), got {self.size}")
        return self


# ----------------------------------------------------------------------------------------------- align
class AlignParams(_Section):
    detector: Literal["hog", "cnn"] = "hog"
    upsample: int = Field(default=1, ge=0, le=3, description="dlib detector upsampling steps")
    cnn_fallback: bool = Field(default=True, description="search again with dlib's CNN detector where HOG finds none")
    min_face_size: int = Field(default=48, ge=8, description="faces smaller than this (px, input image) are rejected")
    aligned_tolerance: float = Field(
        default=0.12, gt=0, lt=1, description="max FFHQ-quad offset/size error (fraction of side) to count as aligned"
    )
    workers: int = Field(default=2, ge=1, le=256, description="worker processes; the output does not depend on it")


# ----------------------------------------------------------------------------------------------- shard
class SplitFractions(_Section):
    train: float = Field(default=0.60, ge=0, le=1)
    val: float = Field(default=0.10, ge=0, le=1)  # ~100 val faces on the 1,140 shared faces: enough to tune on
    test: float = Field(default=0.30, ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        return self


class ShardParams(_Section):
    split: Literal["auto", "ffhq", "hash"] = Field(
        default="auto", description="auto: FFHQ's own rule for the ffhq source, a stable hash split otherwise"
    )
    fractions: SplitFractions = SplitFractions()
    ffhq_val_ids: tuple[int, int] = Field(default=(59000, 60000), description="half-open id range taken as val")
    samples_per_shard: int = Field(default=1000, gt=0)


# --------------------------------------------------------------------------------------------- degrade
class DegradationParams(_Section):
    """Ranges of the GFP-GAN degradation model (gfpgan-spec section 3). Intensities are in 0..255 units."""

    kernel_size: int = Field(default=41, ge=3)
    kernel_iso_prob: float = Field(default=0.5, ge=0, le=1, description="isotropic Gaussian, else anisotropic")
    blur_sigma: Range = (0.1, 10.0)
    downscale: Range = (0.8, 8.0)
    noise_sigma: Range = (0.0, 20.0)
    jpeg_quality: Range = (60.0, 100.0)
    color_shift_prob: float = Field(default=0.3, ge=0, le=1)
    color_shift: Range = (-20.0, 20.0)
    gray_prob: float = Field(default=0.01, ge=0, le=1)
    jitter_prob: float = Field(default=0.3, ge=0, le=1)
    brightness: Range = (0.5, 1.5)
    contrast: Range = (0.5, 1.5)
    saturation: Range = (0.0, 1.5)
    hue: Range = (-0.1, 0.1)
    reference_size: int | None = Field(
        default=None, ge=16,
        description="face side (px) the ranges were defined at: blur sigma, blur kernel radius and downscale "
                    "factor are scaled to the GT's side (dlfp.degradation.size_scale); null: used as given")

    @model_validator(mode="after")
    def _ranges_ordered(self) -> DegradationParams:
        for name in ("blur_sigma", "downscale", "noise_sigma", "jpeg_quality", "color_shift", "brightness",
                     "contrast", "saturation", "hue"):
            _check_range(name, getattr(self, name))
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if not (1 <= self.jpeg_quality[0] and self.jpeg_quality[1] <= 100):
            raise ValueError(f"jpeg_quality must lie in 1..100, got {list(self.jpeg_quality)}")
        if self.downscale[0] <= 0 or self.blur_sigma[0] <= 0:
            raise ValueError("downscale and blur_sigma must be positive")
        return self


PAPER_PRESET = "paper"
PAPER_SIZE = 512  # the published degradation ranges act on 512 px faces


class DegradeParams(_Section):
    presets: dict[str, DegradationParams] = Field(
        default_factory=lambda: {PAPER_PRESET: DegradationParams(reference_size=PAPER_SIZE)},
        description="named severity presets; fixed test pairs are written for each",
    )
    workers: int = Field(default=2, ge=1, le=256)

    @field_validator("presets")
    @classmethod
    def _preset_names(cls, value: dict[str, DegradationParams]) -> dict[str, DegradationParams]:
        if not value:
            raise ValueError("at least one preset is needed")
        for name in value:
            if not name.replace("_", "").isalnum():
                raise ValueError(f"preset name {name!r} must be letters, digits and underscores")
        return value


# ---------------------------------------------------------------------------------------------- report
class ReportParams(_Section):
    samples_in_grid: int = Field(default=24, ge=0, le=500)
    pairs_per_preset: int = Field(default=6, ge=0, le=100)
    prior_ablation: str | None = Field(
        default="benchmarks/results/prior_ablation.json",
        description="the prior ablation (benchmarks/prior_ablation.py) shown on training.html; null: no section")


# --------------------------------------------------------------------------------------------- restore
RESTORER_NAMES = ("lq", "bicubic", "gfpgan")  # lq: dlfp.layout.LQ_RESTORER


class GFPGANArchParams(_Section):
    """GFPGANv1Clean configuration; null: read from the checkpoint's tensor shapes (input_is_latent cannot be)."""

    out_size: int | None = Field(default=None, ge=64, le=1024)
    num_style_feat: int | None = Field(default=None, gt=0)
    channel_multiplier: float | None = Field(default=None, gt=0)
    num_mlp: int | None = Field(default=None, ge=0)
    narrow: float | None = Field(default=None, gt=0)
    different_w: bool | None = None
    sft_half: bool | None = None
    input_is_latent: bool = True


class RestoreParams(_Section):
    restorers: tuple[Literal["lq", "bicubic", "gfpgan"], ...] = Field(
        default=RESTORER_NAMES, description="restorers run on every preset's test pairs")
    weights: str = Field(default=GFPGAN_CHECKPOINT,
                         description="GFPGANv1Clean checkpoint (dl-fp or official v1.3/v1.4); missing: 'not run'")
    arch: GFPGANArchParams = GFPGANArchParams()
    batch_size: int = Field(default=4, ge=1, le=1024)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(default=2, ge=1, le=256, description="torch CPU threads")
    backend: Literal["torch", "openvino", "auto"] = Field(
        default="torch", description="gfpgan inference backend (dlfp.inference); torch keeps the test-set outputs "
                                     "byte-identical (OpenVINO differs by ~1e-6 before 8-bit rounding)")

    @field_validator("restorers", mode="before")
    @classmethod
    def _renamed(cls, value: object) -> object:
        if isinstance(value, list | tuple) and "identity" in value:
            raise ValueError("the no-op restorer `identity` is now called `lq` (the LQ input as it is): "
                             "replace `identity` with `lq` in restore.restorers")
        return value

    @field_validator("restorers")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"restorers must not repeat, got {value}")
        return value


# -------------------------------------------------------------------------------------------- evaluate
class EvaluateParams(_Section):
    batch_size: int = Field(default=32, ge=1, le=4096, description="images per metric / identity-network batch")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(default=2, ge=1, le=256, description="torch CPU threads")
    headline_restorer: str = Field(default="gfpgan", description="restorer whose rank-1 identification is 'accuracy'")
    headline_preset: str = Field(default="paper", description="preset of the headline accuracy")
    accuracy_target: float = Field(default=0.5, ge=0, le=1, description="the project's target rank-1 identification")
    ssim_backend: Literal["opencv", "pyiqa"] = Field(
        default="opencv", description="pyiqa's SSIM definition filtered with OpenCV (fast) or pyiqa itself (float64 "
        "torch conv, ~0.35 s per 256 px image on a CPU); equal to ~1e-6")
    landmark_frame: int = Field(default=256, ge=64, le=1024,
                                description="side the restored face is resized to for dlib landmark detection")



# ------------------------------------------------------------------------------------------------ bias
class BiasParams(_Section):
    """The bias stage (../shared/docs/bias-method.md): skin-tone grouping, labels, bootstrap settings."""

    correction: Literal["none", "sclera", "brightest", "both"] = Field(
        default="both", description="illumination correction of the GT skin tone used for GROUPING (the shift "
        "restored vs GT is always measured plainly on the GT mask)")
    min_group_size: int = Field(default=30, ge=1, description="smaller adjacent groups are merged and flagged")
    resamples: int = Field(default=2000, ge=100, le=100000, description="bootstrap resamples per interval")
    confidence: float = Field(default=0.95, gt=0.5, lt=1, description="confidence level of every interval")
    equivalence_deg: float = Field(default=2.0, gt=0, description="|median dITA| tolerance for 'no shift'")
    age_bins: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"0-19": (0, 20), "20-39": (20, 40), "40-59": (40, 60), "60+": (60, 200)},
        description="named age groups [low, high), in order")
    labels: str | None = Field(default="../shared/faces/labels/aligned_hq_ffhq_attributes.csv",
                               description="CSV with ffhq_id, gender, age (FFHQ attributes); null: none")
    restorers: list[str] | None = Field(default=None, description="restorers to analyse (null: all evaluated)")
    presets: list[str] | None = Field(default=None, description="presets to analyse (null: all evaluated)")
    baseline: str = Field(default="bicubic", description="control restorer: every model is also shown minus it")
    worst_cases: int = Field(default=3, ge=0, le=50, description="worst faces (largest |dITA|) kept per group")
    examples: int = Field(default=4, ge=0, le=50, description="GT example faces kept per skin-tone group")

    @field_validator("age_bins")
    @classmethod
    def _age_bins_ordered(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        previous_high = -float("inf")
        for name, (low, high) in value.items():
            if not low < high or low < previous_high:
                raise ValueError(f"age bin {name!r}: [{low}, {high}) must be non-empty and after the previous bin")
            previous_high = high
        return value

# ------------------------------------------------------------------------------------------ training
class OptimParams(_Section):
    """What the demo and the paper recipes share: optimiser, schedule, EMA, checkpoints, precision."""

    batch_size: int = Field(default=8, ge=1, description="images per step per process (paper: 3 x 4 GPUs)")
    iters: int = Field(default=1000, ge=1, description="training steps")
    lr: float = Field(default=2e-3, gt=0, description="Adam learning rate of every network (published 2e-3)")
    lr_scale: float = Field(default=1.0, gt=0, description="multiplies every learning rate (small runs)")
    lr_milestones: list[int] = Field(default_factory=list, description="steps where the lr is multiplied by gamma")
    lr_gamma: float = Field(default=0.5, gt=0)
    ema_half_life_images: float = Field(
        default=10000, ge=0, description="EMA half-life in training images; decay = 0.5^(images per step / this)")
    ema_rampup: float | None = Field(
        default=0.05, ge=0, description="half-life at most this fraction of the images seen so far (StyleGAN2-ADA); "
                                        "keeps short runs' EMA from averaging in the random init; null: off")
    r1_weight: float = Field(default=10.0, ge=0)
    r1_interval: int = Field(default=16, ge=1, description="lazy R1 every N steps, scaled by N")
    checkpoint_every: int = Field(default=200, ge=1)
    sample_every: int = Field(default=500, ge=1, description="sample grid PNG every N steps (and at the end)")
    resume: bool | Literal["force"] = Field(
        default=True, description="continue from <out>.partial/checkpoints/last.pth if present, refusing a checkpoint "
        "trained with other parameters; force: continue anyway (the receipt records both hashes)")
    keep_checkpoints: bool = Field(default=False, description="keep checkpoints/ in the finished output")
    shuffle_buffer: int = Field(default=1000, ge=1)
    workers: int = Field(default=1, ge=0, description="DataLoader worker processes (degradation runs there)")
    threads: int = Field(default=1, ge=1, description="torch intra-op threads per process (the data worker "
                                                     "takes another core)")
    bf16: bool = Field(default=False, description="bf16 autocast (GPU); off on CPU")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tensorboard: bool = True


class TrainPriorParams(OptimParams):
    """StyleGAN2 facial prior from scratch (or an official clean checkpoint, converted and checked)."""

    out_size: int = Field(default=64, ge=64, le=1024, description="prior resolution (paper: 512)")
    num_style_feat: int = Field(default=128, ge=8)
    num_mlp: int = Field(default=4, ge=1)
    channel_multiplier: float = Field(default=1, gt=0)
    narrow: float = Field(default=0.125, gt=0, le=1, description="width multiplier of every layer")
    mixing_prob: float = Field(default=0.9, ge=0, le=1, description="style mixing probability")
    iters: int = 700
    checkpoint_every: int = 100
    sample_every: int = 100
    eval_samples: int = Field(
        default=64, ge=0, description="prior samples measured at every sample step (dlib HOG face-detection rate, FD "
                                      "in dlib's descriptor space vs train faces; twice as many real faces give the "
                                      "reference levels); 0: off")
    ema_half_life_images: float = 2000
    noise_inputs: bool = Field(
        default=True, description="StyleGAN2's per-pixel noise inputs with learned strengths; false: the strengths "
                                  "stay at 0 (not trained), so every layer's detail comes from the latent")
    equalized_lr: bool = Field(
        default=False, description="per-parameter lr multipliers that give the clean layout StyleGAN2's equalised "
                                   "learning rate (and the mapping network's lr multiplier 0.01); false: one lr")
    diffaugment: str = Field(
        default="", description="DiffAugment policy for the discriminator's inputs, comma-separated ops from "
                                f"{', '.join(DIFFAUGMENT_OPS)} (e.g. 'color,translation,cutout'); '': off")
    official_weights: str | None = Field(
        default=None, description="official StyleGAN2 clean checkpoint: convert/check it instead of training")

    @field_validator("diffaugment")
    @classmethod
    def _known_ops(cls, value: str) -> str:
        return ",".join(diffaugment_policy(value))

    @field_validator("eval_samples")
    @classmethod
    def _enough_for_fd(cls, value: int) -> int:
        if 0 < value < 4:
            raise ValueError(f"eval_samples must be 0 (off) or at least 4 (a Frechet distance needs a covariance), "
                             f"got {value}")
        return value


class LossWeights(_Section):
    """Term weights (gfpgan-spec section 4); 0 switches a term off."""

    pixel: float = Field(default=0.1, ge=0)
    pyramid: float = Field(default=1.0, ge=0)
    pyramid_until: int = Field(default=50000, ge=0, description="pyramid weight becomes pyramid_after from here")
    pyramid_after: float = Field(default=1e-12, ge=0)
    perceptual: float = Field(default=1.0, ge=0)
    perceptual_style: float = Field(default=50.0, ge=0)
    gan: float = Field(default=0.1, ge=0)
    component_gan: float = Field(default=1.0, ge=0)
    component_style: float = Field(default=200.0, ge=0)
    identity: float = Field(default=10.0, ge=0)


class TrainParams(OptimParams):
    """GFP-GAN (GFPGANv1Clean) on the prior; architecture of the decoder read from prior.pth's config."""

    iters: int = 400
    checkpoint_every: int = 100
    sample_every: int = 100
    ema_half_life_images: float = 2000
    preset: str | list[str] = Field(
        default="paper", description="degrade preset for on-the-fly LQ synthesis, or a list mixed evenly (each "
        "sample draws one from (seed, id, epoch)): a model then meets every severity it is tested on")
    fix_decoder: bool = Field(default=False, description="freeze the StyleGAN2 prior (true in the published "
                                                         "recipe; the demo's small prior is too weak to freeze)")
    equalized_lr: bool = Field(
        default=False, description="per-weight lr as the published GFPGANv1's equalised-lr layers (U-Net, SFT and "
        "decoder: 1/sqrt(fan_in), decoder mapping x0.01); false: one lr for every weight of the clean layout")
    decoder_init: Literal["prior", "random"] = Field(
        default="prior", description="prior: the decoder starts from prior.pth (GFP-GAN); random: from a random "
        "initialisation of the same architecture and seed (the prior ablation, benchmarks/prior_ablation.py)")
    weights: LossWeights = LossWeights()
    perceptual_network: Literal["auto", "vgg19", "dlib", "off"] = "auto"
    identity_network: Literal["dlib", "arcface", "off"] = "dlib"
    arcface_path: str | None = None
    grad_clip_norm: float | None = Field(
        default=None, gt=0, description="clip the generator's gradient norm to this (null: off, as published); "
        "keeps an unfrozen small decoder from blowing up: the SFT scales multiply activations level by level")
    val_preset: str = Field(default="moderate", description="fixed val pairs used for validation")
    val_every: int = Field(default=100, ge=1)
    val_count: int | None = Field(default=200, ge=1, description="first N validation pairs (null: all)")

    @field_validator("preset")
    @classmethod
    def _preset_list(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError("a preset mixture must list at least one preset, each once")
        return value

    @property
    def presets(self) -> list[str]:
        """The preset names trained on (one, or the mixture in order)."""
        return [self.preset] if isinstance(self.preset, str) else list(self.preset)


class Params(_Section):
    seed: int = Field(default=20260101, ge=0, lt=2**63, description="global seed; every random choice derives from it")
    data: DataParams
    align: AlignParams = AlignParams()
    shard: ShardParams = ShardParams()
    degrade: DegradeParams = DegradeParams()
    restore: RestoreParams = RestoreParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()
    bias: BiasParams = BiasParams()
    train_prior: TrainPriorParams = TrainPriorParams()
    train: TrainParams = TrainParams()

    def section_hash(self, *sections: str) -> str:
        """Stable short hash of the named sections, for receipts and reports."""
        payload = {name: getattr(self, name).model_dump(mode="json") if name != "seed" else self.seed
                   for name in sections}
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _format_errors(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: invalid parameters"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling and section)"
        lines.append(f"  {key}: {message} (got {item.get('input')!r})" if item["type"] != "missing"
                     else f"  {key}: required key is missing")
    return "\n".join(lines)


def parse_params(raw: object, source: Path = DEFAULT_PARAMS_PATH) -> Params:
    """Validate an already-loaded mapping; errors name the key and the reason."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(_format_errors(source, error)) from None


def load_params(path: Path | str = DEFAULT_PARAMS_PATH) -> Params:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: parameters file not found") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    return parse_params(raw, path)
