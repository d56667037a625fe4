"""Input radiometry: bring a scene's pixel values to the range the model was trained on, by a declared rule.

A checkpoint records `input_range` (the digital numbers it was trained on; [0, 255] for 8-bit imagery and for
old checkpoints that do not say). A scene whose dtype fits inside that range is fed as it is. Any other
scene (uint16, int8, float reflectance) is mapped by the rule its config declares, or refused before the
first window is read, with one line that says which rule to set:

- `auto` (default): as is when the dtype fits the model's range, else refused with the fix;
- `identity`: as is, whatever the dtype (you know the values already lie in the model's range);
- `linear`: value * scale + offset (e.g. scale 255 for reflectance in 0-1, 255/65535 for full-range uint16);
- `percentile`: per band, the scene's `percentiles` (default 2 and 98 %, over its valid pixels, read from a
  downsampled view) are stretched to the model's range.

Mapped values are clipped to the model's range. The rule resolves once per scene into a small `Radiometry`
value that every window read applies (`fpn_geo.reading.read_window(..., radiometry=...)`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fpn_geo.errors import InputError

Rule = Literal["auto", "identity", "linear", "percentile"]
STATS_MAX_PX = 1024  # percentile statistics are read from a view at most this many pixels a side
FLOAT32_MAX = float(np.finfo(np.float32).max)  # windows are mapped in float32


class RadiometryConfig(BaseModel):
    """How a scene's pixel values are mapped to the model's input range (see fpn_geo/radiometry.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: Rule = Field("auto", description="auto | identity | linear | percentile")
    scale: float = Field(1.0, allow_inf_nan=False, description="linear: value * scale + offset")
    offset: float = Field(0.0, allow_inf_nan=False, description="linear: value * scale + offset")
    percentiles: tuple[float, float] = Field(
        (2.0, 98.0), description="percentile: the scene's low and high percentiles"
    )

    @field_validator("percentiles")
    @classmethod
    def _check_percentiles(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0 <= v[0] < v[1] <= 100):
            raise ValueError(f"percentiles {list(v)} must be two numbers with 0 <= low < high <= 100, e.g. [2, 98]")
        return v

    @field_validator("scale")
    @classmethod
    def _check_scale(cls, v: float) -> float:
        if v == 0:
            raise ValueError(
                "scale 0 maps every pixel to the offset; use a non-zero scale, e.g. 255 for 0-1 reflectance"
            )
        return _float32(v, "scale")

    @field_validator("offset")
    @classmethod
    def _check_offset(cls, v: float) -> float:
        return _float32(v, "offset")


def _float32(v: float, name: str) -> float:
    """Windows are mapped in float32: a scale or offset past its range would turn every pixel into inf or NaN."""
    if abs(v) > FLOAT32_MAX:
        raise ValueError(
            f"{name} {v:g} is beyond float32 (|value| <= {FLOAT32_MAX:.3g}), the type pixels are mapped in; "
            "e.g. scale 255 maps reflectance in 0-1, 0.00389 full-range uint16"
        )
    return v


@dataclass(frozen=True)
class Radiometry:
    """Per-band value * scale + offset, clipped to the model's range. Identity: scale 1, offset 0, no clip."""

    scale: tuple[float, ...]
    offset: tuple[float, ...]
    clip: tuple[float, float] | None

    @property
    def is_identity(self) -> bool:
        return self.clip is None and all(s == 1 for s in self.scale) and all(o == 0 for o in self.offset)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """(bands, h, w) in the scene's dtype -> the model's range (float32), or unchanged for the identity."""
        if self.is_identity:
            return image
        s = np.asarray(self.scale, np.float32)[:, None, None]
        o = np.asarray(self.offset, np.float32)[:, None, None]
        with np.errstate(over="ignore", invalid="ignore"):  # a real pixel past float32 becomes inf: clipped below
            out = image.astype(np.float32) * s + o
        out = np.nan_to_num(out, nan=self.clip[0] if self.clip else 0.0)
        if self.clip:
            np.clip(out, self.clip[0], self.clip[1], out=out)
        return out


IDENTITY = Radiometry((1.0,), (0.0,), None)


def dtype_range(dtype: str) -> tuple[float, float] | None:
    """The values a dtype can hold; None for floats (any value)."""
    dt = np.dtype(dtype)
    if dt.kind in "ui":
        info = np.iinfo(dt)
        return float(info.min), float(info.max)
    if dt.kind == "b":
        return 0.0, 1.0
    return None


def _fix_hint(dtype: str, model_range: tuple[float, float]) -> str:
    lo, hi = model_range
    dr = dtype_range(dtype)
    if dr is None:
        return (f"for reflectance in 0-1 set `radiometry: {{rule: linear, scale: {hi - lo:g}, offset: {lo:g}}}`, or "
                "`radiometry: {rule: percentile}` to stretch the scene's 2-98 % to it")
    scale = (hi - lo) / (dr[1] - dr[0])
    offset = lo - dr[0] * scale
    return (f"set `radiometry: {{rule: percentile}}` (the scene's 2-98 % stretched to it), "
            f"`{{rule: linear, scale: {scale:.6g}, offset: {offset:.6g}}}` (the full {dtype} range), "
            "or `{rule: identity}` if its values already lie in that range")


def resolve_radiometry(
    src, bands: tuple[int, ...], model_range: tuple[float, float], cfg: RadiometryConfig | None = None
) -> Radiometry:
    """The mapping for this scene (an open rasterio dataset), or InputError with the rule to set."""
    cfg = cfg or RadiometryConfig()
    dtype = src.dtypes[bands[0] - 1]
    lo, hi = float(model_range[0]), float(model_range[1])
    n = len(bands)
    kinds = {np.dtype(src.dtypes[b - 1]).kind for b in bands}
    if not kinds <= set("uifb"):
        raise InputError(f"scene {src.name} has {dtype} pixels; fpn-geo reads integer or real pixels, convert it "
            "(gdal_translate -ot Float32)")
    if cfg.rule == "identity":
        return IDENTITY
    if cfg.rule == "linear":
        for b in bands:
            _check_linear_reaches(src.name, src.dtypes[b - 1], cfg.scale, cfg.offset, (lo, hi))
        return Radiometry((cfg.scale,) * n, (cfg.offset,) * n, (lo, hi))
    if cfg.rule == "percentile":
        return _percentile_stretch(src, bands, (lo, hi), cfg.percentiles)
    ranges = [dtype_range(src.dtypes[b - 1]) for b in bands]
    if all(r is not None and lo <= r[0] and r[1] <= hi for r in ranges):
        return IDENTITY
    shown = "real numbers" if ranges[0] is None else f"values {ranges[0][0]:g} to {ranges[0][1]:g}"
    raise InputError(
        f"scene {src.name} is {dtype} ({shown}) but the model was trained on values {lo:g} to {hi:g}; "
        + _fix_hint(dtype, (lo, hi))
    )


def values_inside(dtype: str, scale: float, offset: float, model_range: tuple[float, float]) -> int | None:
    """How many of the values an integer dtype holds land strictly inside the model's range through
    value * scale + offset (the others are clipped to its ends); None for real dtypes, whose values are open."""
    dr = dtype_range(dtype)
    if dr is None:
        return None
    lo, hi = model_range
    a, b = sorted(((lo - offset) / scale, (hi - offset) / scale))  # scale != 0 (RadiometryConfig)
    first, last = max(dr[0], math.floor(a) + 1), min(dr[1], math.ceil(b) - 1)
    return int(max(0, last - first + 1))


def _check_linear_reaches(name: str, dtype: str, scale: float, offset: float, model_range: tuple[float, float]) -> None:
    """InputError when a linear rule maps every value the scene's dtype holds outside the model's range: each pixel
    would be clipped to one end of it, a blank image that runs to 0 buildings without a word."""
    if values_inside(dtype, scale, offset, model_range) != 0:
        return
    dr = dtype_range(dtype)
    assert dr is not None  # values_inside counts integer dtypes only
    lo, hi = model_range
    a, b = sorted((dr[0] * scale + offset, dr[1] * scale + offset))
    raise InputError(
        f"radiometry {{rule: linear, scale: {scale:g}, offset: {offset:g}}} maps scene {name}'s {dtype} values "
        f"({dr[0]:g} to {dr[1]:g}) to {a:g} to {b:g}, none inside the model's range {lo:g} to {hi:g} (every pixel "
        f"would be clipped to its ends); " + _fix_hint(dtype, model_range)
    )


def _percentile_stretch(
    src, bands: tuple[int, ...], model_range: tuple[float, float], pct: tuple[float, float]
) -> Radiometry:
    from rasterio.enums import Resampling

    f = max(1.0, max(src.width, src.height) / STATS_MAX_PX)
    h, w = max(1, round(src.height / f)), max(1, round(src.width / f))
    image = src.read(list(bands), out_shape=(len(bands), h, w), resampling=Resampling.nearest).astype(np.float64)
    valid = src.dataset_mask(out_shape=(h, w)) > 0
    lo, hi = model_range
    scales, offsets = [], []
    for b, band in zip(bands, image):
        vals = band[valid & np.isfinite(band)]
        if vals.size == 0:
            scales.append(1.0)
            offsets.append(0.0)
            continue
        p_lo, p_hi = np.percentile(vals, pct)
        if not p_hi > p_lo:
            raise InputError(
                f"scene {src.name} band {b} is flat ({p_lo:g}) between its {pct[0]:g} and {pct[1]:g} % percentiles; "
                "a percentile stretch cannot map it: use `radiometry: {rule: linear, ...}`"
            )
        s = (hi - lo) / (p_hi - p_lo)
        scales.append(float(s))
        offsets.append(float(lo - p_lo * s))
    return Radiometry(tuple(scales), tuple(offsets), (lo, hi))
