"""Where a grid of pixels lies on the ground, and the rules both inference and training measure it by.

`Georef` is the small value type shared by planning, vectorizing and writing. Beside it, the one home of:
the UTM zone where metres and areas are true (`utm_at`, `local_utm`), a pixel's size in metres
(`pixel_size_m`), the model-scale rule (`model_scale`, `scaled_shape`) and the remote-path test (`is_local`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyproj
from affine import Affine

from fpn_geo.errors import InputError

SNAP_TO_NATIVE = 0.05  # a scene within 5% of the model's GSD is read as it is: resampling would only blur it
MAX_GRID_SIDE = 2**31 - 1  # GDAL sizes a raster in int32: no grid past it can be read, written or held


def is_local(path: str) -> bool:
    """True for a file on this machine; False for GDAL virtual paths (/vsis3/...) and URLs (s3://, https://)."""
    return not (path.startswith("/vsi") or "://" in path)


def utm_at(crs, x: float, y: float) -> pyproj.CRS:
    """The UTM zone at point (x, y) of `crs`: where metres and square metres are true, whatever `crs` is."""
    lon, lat = pyproj.Transformer.from_crs(crs, pyproj.CRS.from_epsg(4326), always_xy=True).transform(x, y)
    zone = int((lon + 180) // 6) % 60 + 1
    return pyproj.CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def bounds_utm(crs, bounds) -> pyproj.CRS:
    """The UTM zone at the centre of (x0, y0, x1, y1) bounds, e.g. a GeoDataFrame's ``total_bounds``."""
    x0, y0, x1, y1 = bounds
    return utm_at(crs, (x0 + x1) / 2, (y0 + y1) / 2)


def local_utm(transform: Affine, crs, width: int, height: int) -> pyproj.CRS:
    """The UTM zone at a grid's centre (`utm_at`)."""
    return utm_at(crs, *(transform * (width / 2, height / 2)))


def pixel_size_m(transform: Affine, crs, width: int, height: int) -> float:
    """Metres per pixel at a grid's centre, measured in its local UTM zone (valid for any CRS)."""
    cx, cy = transform * (width / 2, height / 2)
    to_utm = pyproj.Transformer.from_crs(crs, local_utm(transform, crs, width, height), always_xy=True)
    x0, y0 = to_utm.transform(cx, cy)
    x1, y1 = to_utm.transform(*(transform * (width / 2 + 1, height / 2)))
    x2, y2 = to_utm.transform(*(transform * (width / 2, height / 2 + 1)))
    return math.sqrt(math.hypot(x1 - x0, y1 - y0) * math.hypot(x2 - x0, y2 - y0))


def model_scale(scene_gsd_m: float, model_gsd_m: float | None, match_gsd: bool = True) -> float:
    """Model pixels per scene pixel; within 5% of 1 the scene is read as it is (no resampling).

    The one rule for inference (`plan.plan_scene`) and training (`train.dataset`, `train.cache`).
    """
    if not (match_gsd and model_gsd_m):
        return 1.0
    scale = scene_gsd_m / model_gsd_m
    return 1.0 if abs(scale - 1.0) < SNAP_TO_NATIVE else scale


def scaled_shape(height: int, width: int, scale: float) -> tuple[int, int]:
    """A grid's (height, width) at `scale` model pixels per pixel, covering all of it. InputError past a raster's
    largest side: a checkpoint whose gsd_m is absurdly fine for the scene (1e-300) asks for a grid no machine holds,
    whose sizes then overflow every later step."""
    if scale == 1.0:
        return height, width
    if not max(height, width) * scale <= MAX_GRID_SIDE:  # also inf and NaN
        raise InputError(
            f"at {scale:.3g} model pixels a scene pixel (the scene's GSD over the checkpoint's gsd_m) the model grid "
            f"would be {height * scale:.3g} x {width * scale:.3g} px, past a raster's {MAX_GRID_SIDE} a side; use a "
            "checkpoint trained near the scene's GSD, or set match_gsd: false to read the scene as it is"
        )
    return max(1, math.ceil(height * scale - 1e-6)), max(1, math.ceil(width * scale - 1e-6))


class OnGround:
    """For a frozen dataclass with a `transform` (6 affine coefficients) and a `crs_wkt` field: both as objects."""

    transform: tuple[float, ...]
    crs_wkt: str

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform[:6])

    @property
    def crs(self) -> pyproj.CRS:
        return pyproj.CRS.from_wkt(self.crs_wkt)


@dataclass(frozen=True)
class Georef(OnGround):
    """A raster grid's affine transform, CRS, size and pixel size in metres, plus the UTM zone where areas are true."""

    transform: tuple[float, ...]
    crs_wkt: str
    height: int
    width: int
    gsd_m: float
    utm_epsg: int

    @property
    def utm(self) -> pyproj.CRS:
        return pyproj.CRS.from_epsg(self.utm_epsg)

    def scaled(self, scale: float, height: int, width: int) -> Georef:
        """The same ground at `scale` pixels per pixel of this grid (the model's grid of a scene)."""
        if scale == 1.0 and (height, width) == (self.height, self.width):
            return self
        t = self.affine * Affine.scale(1.0 / scale)
        return Georef(tuple(t)[:6], self.crs_wkt, height, width, self.gsd_m / scale, self.utm_epsg)
