"""The typed schema of params.yaml: one section per stage, validated once at start-up.

Every stage entry receives a validated `Params` object and passes plain values from it to library code;
nothing below the stage entries reads configuration dicts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_PARAMS_PATH = Path("params.yaml")


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the key and the reason."""


class _Section(BaseModel):
    # A misspelt key is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


Range = Annotated[tuple[float, float], Field(description="closed interval [low, high]")]


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


class FFHQSource(_Section):
    metadata_url: str = "https://drive.google.com/uc?id=16N0RV4fHI6joBuKbQAoG34V_cQk7vxSA"
    metadata_md5: str | None = None
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


class DataParams(_Section):
    source: Literal["folder", "ffhq"] = "folder"
    folder: str | None = Field(default=None, description="folder, .zip or .tar of images (source: folder)")
    count: int | None = Field(default=None, gt=0, description="keep only the first N images in id order")
    size: int = Field(default=256, ge=64, le=1024, description="side of the aligned faces in pixels")
    cache_dir: str = Field(default="data/downloads", description="where downloads are cached between runs")
    max_pixels: int = Field(default=100_000_000, gt=0, description="larger images are rejected, not decoded")
    ffhq: FFHQSource = FFHQSource()

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
    train: float = Field(default=0.65, ge=0, le=1)
    val: float = Field(default=0.05, ge=0, le=1)
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


class DegradeParams(_Section):
    presets: dict[str, DegradationParams] = Field(
        default_factory=lambda: {PAPER_PRESET: DegradationParams()},
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


class Params(_Section):
    seed: int = Field(default=20260101, ge=0, lt=2**63, description="global seed; every random choice derives from it")
    data: DataParams
    align: AlignParams = AlignParams()
    shard: ShardParams = ShardParams()
    degrade: DegradeParams = DegradeParams()
    report: ReportParams = ReportParams()

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
