"""Training configuration: YAML under configs/, validated by pydantic; a wrong key or type is a ConfigError."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fpn_geo.config import build_config, read_yaml_mapping
from fpn_geo.errors import ConfigError


class SourceConfig(BaseModel):
    """One labelled scene (or a glob of them): a GeoTIFF plus either vector labels or a mask raster.

    ``labels`` and ``mask`` may use ``{stem}`` for the image file's stem when ``image`` is a glob.
    ``val_block`` holds out (left, top, right, bottom) as fractions of the image extent for validation;
    training chips never touch it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    place: str | None = Field(
        None, description="place this source belongs to (held-out scores are per place); default: name"
    )
    image: str = Field(description="GeoTIFF path or glob, relative to the config file's folder or absolute")
    labels: str | None = Field(None, description="vector labels (GeoJSON, GPKG, Shapefile), any CRS")
    mask: str | None = Field(None, description="building mask raster (0/1 or 0/255) on the image grid")
    weight: float = Field(1.0, gt=0, description="share of training chips drawn from this source")
    val_block: tuple[float, float, float, float] | None = Field(
        None, description="held-out block (left, top, right, bottom) in fractions of the extent"
    )
    imagery: Literal["drone", "satellite"] | None = Field(
        None, description="kind of imagery, for the drone and satellite means of held-out scores"
    )
    licence: str | None = Field(None, description="data licence (SPDX id where there is one), for the model card")
    commercial: bool = Field(True, description="false: the licence forbids commercial use (e.g. CC-BY-NC-SA-4.0)")

    @model_validator(mode="after")
    def _check(self) -> SourceConfig:
        if (self.labels is None) == (self.mask is None):
            raise ValueError(f"source {self.name!r} needs exactly one of 'labels' (vector file) or 'mask' (raster)")
        if self.val_block is not None:
            left, top, right, bottom = self.val_block
            if not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):
                raise ValueError(
                    f"source {self.name!r}: val_block {list(self.val_block)} must be fractions "
                    "0 <= left < right <= 1 and 0 <= top < bottom <= 1, e.g. [0.6667, 0, 1, 1]"
                )
        return self

    def pairs(self, root: Path) -> list[tuple[Path, Path, str]]:
        """(image, label file, 'labels'|'mask') for every image the path or glob names."""
        pattern = self.image if Path(self.image).is_absolute() else str(root / self.image)
        images = sorted(Path(p) for p in glob.glob(pattern)) if glob.has_magic(pattern) else [Path(pattern)]
        if not images or not images[0].exists():
            raise ConfigError(
                f"source {self.name!r}: no image matches {self.image!r}; check the path (relative to {root})"
            )
        kind, template = ("labels", self.labels) if self.labels is not None else ("mask", self.mask)
        assert template is not None  # _check: exactly one of labels and mask
        out = []
        for img in images:
            lab = template.format(stem=img.stem)
            lab_path = Path(lab) if Path(lab).is_absolute() else root / lab
            if not lab_path.exists():
                raise ConfigError(f"source {self.name!r}: {kind} file {lab_path} for image {img.name} does not exist")
            out.append((img, lab_path, kind))
        return out


class TrainConfig(BaseModel):
    """Every knob of a training run; the whole config is stored in the checkpoint metadata."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: list[SourceConfig] = Field(min_length=1)
    non_commercial_data: bool = Field(
        True, description="false drops every source marked commercial: false, so the weights carry no NC licence"
    )
    out_dir: str = Field("runs/train", description="where best/last checkpoints, metrics.csv and curve.png go")
    gsd_m: float = Field(0.3, gt=0, description="ground sample distance every source is resampled to (m)")
    bands: tuple[int, ...] = Field((1, 2, 3), min_length=1, description="1-based band indexes to read")
    depth: Literal[18, 34, 50, 101] = 18
    fpn_channels: int = Field(128, gt=0)
    head_channels: int = Field(128, gt=0)
    contact_px: int = Field(2, ge=0, description="half-width of the contact band / separator gap, model pixels")
    target: Literal["separator", "contact"] = Field(
        "separator",
        description="separator: background/interior/separator (1-px inner border + gaps); contact: the old contact band"
    )
    cache_gsds: tuple[float, ...] = Field((0.15, 0.3), min_length=1, description="model GSDs the training cache holds")
    colour_aug: float = Field(0.25, ge=0, lt=1, description="colour augmentation strength (GPU trainer)")
    blur_p: float = Field(0.3, ge=0, le=1, description="share of batches blurred (GPU trainer)")
    scale_aug: tuple[float, float] = Field((0.7, 1.4), description="chip zoom range (GPU trainer); (1, 1) turns it off")
    holdout_margin_m: float = Field(4.0, ge=0, description="margin blanked around each held-out block in the cache")
    chip: int = Field(256, gt=0, description="training chip side, model pixels; a multiple of 32")
    val_chip: int = Field(256, gt=0, description="validation grid window side; a multiple of 32")
    val_overlap: int = Field(64, ge=0, description="overlap between validation windows")
    batch: int = Field(8, gt=0)
    epochs: int = Field(20, gt=0)
    steps_per_epoch: int = Field(50, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(50, ge=0)
    dice_weight: float = Field(1.0, ge=0, description="loss = cross-entropy + dice_weight * Dice")
    class_weights: tuple[float, float, float] = Field((1.0, 1.0, 2.0), description="cross-entropy weight per class")
    jitter: float = Field(0.1, ge=0, lt=1, description="brightness/contrast jitter amplitude")
    threshold: float = Field(0.5, gt=0, lt=1, description="footprint threshold used in validation")
    min_area_m2: float = Field(4.0, ge=0, description="smallest building counted in validation F1")
    simplify_m: float = Field(0.2, ge=0)
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    threads: int = Field(2, gt=0, description="CPU threads for torch (share the machine)")
    max_minutes: float | None = Field(None, gt=0, description="stop after the epoch that passes this wall time")
    seed: int = 0
    resume: str | None = Field(None, description="last.safetensors of an earlier run to continue from")
    init: str | None = Field(
        None, description="continue this checkpoint of the same architecture (its weights, normalisation and ledger)"
    )
    backbone_lr_mult: float = Field(1.0, ge=0, description="the ResNet body's learning rate as a share of lr")
    freeze_backbone: bool = Field(False, description="train only FPN and head; the body and its BatchNorm stay")
    base_dir: str | None = Field(
        None, description="the folder relative paths (sources, out_dir, resume, init) resolve against; "
        "load_train_config sets it to the YAML file's folder, else the working directory",
    )

    @property
    def root(self) -> Path:
        return Path(self.base_dir) if self.base_dir else Path.cwd()

    @model_validator(mode="before")
    @classmethod
    def _drop_non_commercial(cls, data: Any) -> Any:
        """``non_commercial_data: false`` is the one line that keeps NC-licensed sources out of training."""
        if isinstance(data, dict) and data.get("non_commercial_data") is False:
            kept = [s for s in data.get("sources") or [] if not (isinstance(s, dict) and s.get("commercial") is False)]
            data = {**data, "sources": kept}
        return data

    @field_validator("chip", "val_chip")
    @classmethod
    def _multiple_of_32(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"{v} is not a multiple of 32; use {max(32, round(v / 32) * 32)}")
        return v

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.val_overlap >= self.val_chip // 2:
            raise ValueError(
                f"val_overlap {self.val_overlap} must be less than half of val_chip ({self.val_chip // 2})"
            )
        if self.fpn_channels % 32 or self.head_channels % 32:
            raise ValueError("fpn_channels and head_channels must be multiples of 32 (GroupNorm uses 32 groups)")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        if not any(s.val_block for s in self.sources):
            raise ValueError("no source has a val_block; hold out a block of one source for validation, e.g. "
                "val_block: [0.6667, 0, 1, 1]")
        return self


PATH_KEYS = ("out_dir", "resume", "init")


def load_train_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """YAML file then overrides (None-valued overrides are ignored); raises ConfigError naming the bad key.

    Relative paths in the file resolve against the file's folder (`base_dir`); path overrides (command-line
    flags) against the working directory.
    """
    data: dict[str, Any] = {}
    source = "overrides"
    if path is not None:
        data, source = read_yaml_mapping(Path(path), "training config"), str(path)
        data.setdefault("base_dir", str(Path(path).resolve().parent))
    for key in PATH_KEYS:
        if isinstance(overrides.get(key), str | Path):
            overrides[key] = str(Path(overrides[key]).resolve())
    data.update({k: v for k, v in overrides.items() if v is not None})
    return build_config(
        TrainConfig,
        data,
        source,
        lambda key: SourceConfig.model_fields if "sources" in key else TrainConfig.model_fields,
    )
