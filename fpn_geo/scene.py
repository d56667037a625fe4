"""Opening a scene: every check that lets a bad input fail at once with a one-line reason."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from fpn_geo.errors import InputError
from fpn_geo.georef import Georef, OnGround, is_local, local_utm, pixel_size_m


@dataclass(frozen=True)
class SceneInfo(OnGround):
    """What the pipeline needs to know about a scene, without its pixels."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs_wkt: str
    transform: tuple[float, ...]
    nodata: float | None
    gsd_m: float  # ground size of one pixel, in metres, at the scene's centre

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    def georef(self) -> Georef:
        epsg = local_utm(self.affine, self.crs, self.width, self.height).to_epsg()
        assert epsg is not None  # a UTM zone always has its EPSG code
        return Georef(tuple(self.transform[:6]), self.crs_wkt, self.height, self.width, self.gsd_m, epsg)


def open_scene(path: str, bands: tuple[int, ...] | None = None) -> SceneInfo:
    """Validate a scene and describe it; raises InputError naming the problem and the fix."""
    if is_local(path) and not os.path.exists(path):
        raise InputError(f"scene {path} does not exist")
    if is_local(path) and os.path.getsize(path) == 0:
        raise InputError(f"scene {path} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                info = _describe(src, path)
                _probe_last_block(src, path)
    except RasterioIOError as e:
        raise InputError(f"scene {path} is not a readable raster: {gdal_reason(e)}") from e
    if bands is not None:
        missing = [b for b in bands if b < 1 or b > info.count]
        if missing:
            raise InputError(
                f"scene {path} has {info.count} band(s) but the model reads bands {list(bands)}; "
                f"use a scene with at least {max(bands)} bands or a checkpoint trained on {info.count}"
            )
    return info


def _describe(src: rasterio.DatasetReader, path: str) -> SceneInfo:
    if src.crs is None:
        raise InputError(f"scene {path} has no CRS; assign one first, e.g. gdal_edit.py -a_srs EPSG:XXXX")
    if src.transform == Affine.identity() and not src.gcps[0]:
        raise InputError(f"scene {path} has no geotransform; georeference it first (gdal_translate -a_ullr ...)")
    if src.transform.b != 0 or src.transform.d != 0:
        raise InputError(f"scene {path} has a rotated geotransform; warp it north-up first (gdalwarp)")
    if np.dtype(src.dtypes[0]).kind not in "uif":
        raise InputError(
            f"scene {path} is {src.dtypes[0]}; expected integer or real pixels (convert: gdal_translate -ot Float32)"
        )
    return SceneInfo(
        path=path,
        width=src.width,
        height=src.height,
        count=src.count,
        dtype=src.dtypes[0],
        crs_wkt=src.crs.to_wkt(),
        transform=tuple(src.transform)[:6],
        nodata=src.nodata,
        gsd_m=pixel_size_m(src.transform, CRS.from_user_input(src.crs), src.width, src.height),
    )


def gdal_reason(e: BaseException) -> str:
    """The first line of GDAL's own reason: rasterio wraps it as "Read failed. See previous exception" (e.g. the
    missing source file of a VRT), so follow the chain to the first message that says something."""
    messages = []
    seen = set()
    link: BaseException | None = e
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        first = (str(link).splitlines() or [""])[0]
        if first and "see previous exception" not in first.lower():
            messages.append(first)
        link = link.__cause__ or link.__context__
    return messages[-1] if messages else "unknown GDAL error"


def _probe_last_block(src: rasterio.DatasetReader, path: str) -> None:
    """A truncated TIFF opens fine and fails at its last blocks: read one now, not an hour in."""
    h, w = src.block_shapes[0]
    win = Window(max(0, src.width - w), max(0, src.height - h), min(w, src.width), min(h, src.height))
    try:
        src.read(1, window=win)
    except RasterioIOError as e:
        reason = gdal_reason(e)
        if path.lower().endswith(".vrt") or src.driver == "VRT":
            raise InputError(
                f"scene {path} cannot be read: {reason}; a VRT's source files must exist and be readable"
            ) from e
        raise InputError(f"scene {path} is corrupt or truncated: {reason}") from e
