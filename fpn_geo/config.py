"""Run configuration: YAML defaults under configs/, validated by pydantic, overridden by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fpn_geo.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "segment.yaml"


class SegmentConfig(BaseModel):
    """Every knob of a `segment` run; all of it is recorded in the GeoPackage's provenance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: int = Field(512, gt=0, description="window side in model pixels; a multiple of 32")
    overlap: int = Field(64, ge=0, description="overlap between windows in model pixels")
    batch: int = Field(4, gt=0, description="windows per model call")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    compile: bool = Field(False, description="torch.compile the model (CUDA)")
    threshold: float = Field(0.5, gt=0, lt=1, description="building probability threshold")
    min_area_m2: float = Field(4.0, ge=0, description="smallest building kept, in square metres")
    simplify_m: float = Field(0.2, ge=0, description="Douglas-Peucker tolerance in metres")
    separate_touching: bool = Field(True, description="split touching buildings with the contact class")
    strip_rows: int = Field(1024, gt=0, description="rows per vectorization strip")
    match_gsd: bool = Field(True, description="resample windows to the checkpoint's GSD")
    probability: Literal["cog", "none"] = Field("cog", description="also write the probability COG")
    gdal_cache_mb: int = Field(128, gt=0, description="GDAL block cache; bounds raster I/O memory")

    @model_validator(mode="after")
    def _check_window(self) -> "SegmentConfig":
        if self.window % 32:
            raise ValueError(f"window {self.window} must be a multiple of 32, e.g. {max(32, round(self.window / 32) * 32)}")
        if self.overlap >= self.window // 2:
            raise ValueError(f"overlap {self.overlap} must be less than half the window ({self.window // 2})")
        return self


def _explain(e: ValidationError, source: str) -> ConfigError:
    parts = []
    for err in e.errors():
        key = ".".join(str(x) for x in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {key!r} (known: {', '.join(SegmentConfig.model_fields)})")
        else:
            parts.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return ConfigError(f"{source}: " + "; ".join(parts))


def load_config(path: str | Path | None = None, **overrides: Any) -> SegmentConfig:
    """YAML file (default configs/segment.yaml) then overrides; None-valued overrides are ignored."""
    data: dict[str, Any] = {}
    source = str(path) if path else "defaults"
    p = Path(path) if path else DEFAULT_CONFIG
    if path or p.is_file():
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read config {p}: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config {p} must be a mapping of keys to values, got {type(data).__name__}")
        source = str(p)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return SegmentConfig(**data)
    except ValidationError as e:
        raise _explain(e, source) from e
