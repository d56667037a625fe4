"""Where a grid of pixels lies on the ground: one small value type shared by planning, vectorizing and writing."""

from __future__ import annotations

from dataclasses import dataclass

from affine import Affine
from rasterio.crs import CRS


@dataclass(frozen=True)
class Georef:
    """A raster grid's affine transform, CRS, size and pixel size in metres, plus the UTM zone where areas are true."""

    transform: tuple[float, ...]
    crs_wkt: str
    height: int
    width: int
    gsd_m: float
    utm_epsg: int

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform[:6])

    @property
    def crs(self) -> CRS:
        return CRS.from_wkt(self.crs_wkt)

    @property
    def utm(self) -> CRS:
        return CRS.from_epsg(self.utm_epsg)

    def scaled(self, scale: float, height: int, width: int) -> Georef:
        """The same ground at `scale` pixels per pixel of this grid (the model's grid of a scene)."""
        if scale == 1.0 and (height, width) == (self.height, self.width):
            return self
        t = self.affine * Affine.scale(1.0 / scale)
        return Georef(tuple(t)[:6], self.crs_wkt, height, width, self.gsd_m / scale, self.utm_epsg)
