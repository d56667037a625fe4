"""Run configuration: YAML defaults under configs/, validated by pydantic, overridden by CLI flags."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fpn_geo.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "segment.yaml"


class SegmentConfig(BaseModel):
    """Every knob of a `segment` run; all of it is recorded in the GeoPackage's provenance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: int = Field(512, gt=0, description="window side in model pixels; a multiple of 32")
    overlap: int = Field(64, ge=0, description="overlap between windows in model pixels")
    batch: int = Field(1, gt=0, description="windows per model call: 1 on CPU, 32-64 on a GPU")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    compile: bool = Field(False, description="torch.compile the model (CUDA)")
    readers: int = Field(0, ge=0, description="reader threads; 0 = auto: 1 on CPU, up to 8 on CUDA")
    threshold: float = Field(0.5, gt=0, lt=1, description="building probability threshold")
    min_area_m2: float = Field(4.0, ge=0, description="smallest building kept, in square metres")
    simplify_m: float = Field(0.3, ge=0, description="Douglas-Peucker tolerance in metres (0.3: a pixel of a 0.30 m model grid, which takes out the staircase of traced pixel edges)")
    regularize: float = Field(0.0, ge=0, le=1, description="right-angled outlines: a building whose IoU with its oriented minimum rectangle is at least this becomes that rectangle (e.g. 0.85); 0 = off")
    separate_touching: bool = Field(True, description="split touching buildings with the contact class")
    block_windows: int = Field(4, gt=0, description="block side in windows: the unit that is blended and vectorized at once; bounds memory")
    post_threads: int = Field(0, ge=0, description="threads post-processing blocks beside the model; 0 = auto: 1 on CPU, most cores on CUDA")
    match_gsd: bool = Field(True, description="resample windows to the checkpoint's GSD")
    probability: Literal["cog", "none"] = Field("cog", description="also write the probability COG")
    probability_grid: Literal["model", "native"] = Field("model", description="the COG's grid: the model's GSD, or the scene's own")
    gdal_cache_mb: int = Field(128, gt=0, description="GDAL block cache; bounds raster I/O memory")

    @model_validator(mode="after")
    def _check_window(self) -> "SegmentConfig":
        if self.window % 32:
            raise ValueError(f"window {self.window} must be a multiple of 32, e.g. {max(32, round(self.window / 32) * 32)}")
        if self.overlap >= self.window // 2:
            raise ValueError(f"overlap {self.overlap} must be less than half the window ({self.window // 2})")
        return self


M = TypeVar("M", bound=BaseModel)


def read_yaml_mapping(path: Path, what: str = "config") -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read {what} {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of keys to values, got {type(data).__name__}")
    return data


def build_config(
    model: type[M], data: dict[str, Any], source: str, known_keys: Callable[[str], Iterable[str]] | None = None
) -> M:
    """Validate `data` as `model`; every problem is named with its key, what came and what was expected.

    known_keys(key) lists the keys allowed where an unknown `key` was found (default: the model's own).
    """
    try:
        return model(**data)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            key = ".".join(str(x) for x in err["loc"]) or "config"
            if err["type"] == "extra_forbidden":
                known = known_keys(key) if known_keys else model.model_fields
                parts.append(f"unknown key {key!r} (known: {', '.join(known)})")
            else:
                inp = err.get("input")
                shown = "" if isinstance(inp, dict) else f" (got {inp!r})"
                parts.append(f"{key}: {err['msg']}{shown}")
        raise ConfigError(f"{source}: " + "; ".join(parts)) from e


def load_config(path: str | Path | None = None, **overrides: Any) -> SegmentConfig:
    """YAML file (default configs/segment.yaml) then overrides; None-valued overrides are ignored."""
    data: dict[str, Any] = {}
    source = "defaults"
    p = Path(path) if path else DEFAULT_CONFIG
    if path or p.is_file():
        data, source = read_yaml_mapping(p), str(p)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return build_config(SegmentConfig, data, source)
