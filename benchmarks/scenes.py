"""Large benchmark scenes made from the real Kampala mosaic (EPSG:3857, 7.5 cm), with their labels.

A scene of side N repeats the 3072x2048 mosaic on the mosaic's own grid (same origin, same pixel
size, same CRS), so it reads like one big orthophoto. Two storage forms:

- ``build_vrt``: a GDAL VRT over the bundled tiled, deflate-compressed GeoTIFF; costs nothing to
  make, used by the memory test.
- ``build_tiff``: the same pixels written out as a tiled (512x512), deflate-compressed GeoTIFF, as
  real scenes are stored; every block is decoded for real. Used by the benchmarks.

``build_nodata_tiff`` adds a scene whose lower-right triangle is nodata (0), like the collar of a
rotated satellite strip: a third of its windows hold no data at all.

Labels for each scene are the mosaic's OSM outlines shifted onto every copy (``scene_labels``),
so the oracle "model" can answer anywhere in the scene.

    python benchmarks/scenes.py 2048 8192 16384      # build (cached) and list the scenes
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from rasterio.windows import Window

REPO = Path(__file__).resolve().parent.parent
# FPN_GEO_BENCH_MOSAIC: another source to tile (the GPU run uses the smaller z20 mosaic to fit its upload).
MOSAIC = Path(os.environ.get("FPN_GEO_BENCH_MOSAIC") or REPO / "data" / "kampala_oam" / "mosaic_z21_12x8_3072x2048.tif")
LABELS = REPO / "data" / "kampala_oam" / "labels.geojson"
CACHE = Path(os.environ.get("FPN_GEO_BENCH_DIR", "/tmp/fpn-geo-bench"))


@dataclass(frozen=True)
class Scene:
    """A benchmark scene on disk and its size in pixels."""

    name: str
    path: Path
    width: int
    height: int
    nodata_share: float = 0.0  # share of pixels that are nodata

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def coarse_mosaic(factor: int = 4, out_dir: Path = CACHE) -> Path:
    """The mosaic averaged down `factor` times (7.5 cm -> 30 cm for 4): satellite-like scenes at the model's GSD."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{MOSAIC.stem}_x{factor}.tif"
    if path.exists():
        return path
    with rasterio.open(MOSAIC) as src:
        h, w = src.height // factor, src.width // factor
        data = src.read(out_shape=(src.count, h, w), resampling=rasterio.enums.Resampling.average)
        profile = dict(driver="GTiff", width=w, height=h, count=src.count, dtype="uint8", crs=src.crs,
                       transform=src.transform * rasterio.Affine.scale(factor), tiled=True, compress="deflate")
    tmp = path.with_name(path.name + ".tmp")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
    os.replace(tmp, path)
    return path


def _mosaic_profile(source: Path = MOSAIC) -> dict:
    with rasterio.open(source) as src:
        return dict(width=src.width, height=src.height, count=src.count, crs=src.crs, transform=src.transform,
                    dtype=src.dtypes[0], block=src.block_shapes[0])


def _name(source: Path) -> str:
    return "kampala" if source == MOSAIC else source.stem


def build_vrt(width: int, height: int | None = None, out_dir: Path = CACHE, source: Path = MOSAIC) -> Path:
    """A VRT of width x height that tiles the mosaic (or `source`) on its own grid (cut at the right and bottom)."""
    height = height or width
    m = _mosaic_profile(source)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{_name(source)}_{width}x{height}.vrt"
    if path.exists():
        return path
    t = m["transform"]
    by, bx = m["block"]
    bands = []
    for b in range(1, m["count"] + 1):
        sources = []
        for y in range(0, height, m["height"]):
            for x in range(0, width, m["width"]):
                w, h = min(m["width"], width - x), min(m["height"], height - y)
                sources.append(
                    f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(str(source))}</SourceFilename>'
                    f"<SourceBand>{b}</SourceBand>"
                    f'<SourceProperties RasterXSize="{m["width"]}" RasterYSize="{m["height"]}" DataType="Byte" '
                    f'BlockXSize="{bx}" BlockYSize="{by}"/>'
                    f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/><DstRect xOff="{x}" yOff="{y}" xSize="{w}" '
                    f'ySize="{h}"/>'
                    "</SimpleSource>"
                )
        colour = ("Red", "Green", "Blue")[b - 1] if b <= 3 else "Undefined"
        bands.append('<VRTRasterBand dataType="Byte" '
            f'band="{b}"><ColorInterp>{colour}</ColorInterp>{"".join(sources)}</VRTRasterBand>')
    xml = (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{escape(m["crs"].to_wkt())}</SRS>'
        f"<GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, "
        f"{t.e!r}</GeoTransform>{''.join(bands)}</VRTDataset>"
    )
    tmp = path.with_suffix(".vrt.tmp")
    tmp.write_text(xml)
    os.replace(tmp, path)
    return path


def _tiff_profile(width: int, height: int, nodata: int | None, source: Path = MOSAIC) -> dict:
    m = _mosaic_profile(source)
    return dict(
        driver="GTiff", width=width, height=height, count=m["count"], dtype="uint8", crs=m["crs"],
        transform=m["transform"],
        nodata=nodata, tiled=True, blockxsize=512, blockysize=512, compress="deflate", predictor=2, interleave="pixel",
        BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS",
    )


def _write_tiff(path: Path, width: int, height: int, nodata: int | None, edit=None, source: Path = MOSAIC) -> Path:
    """Copy the tiling VRT into a tiled compressed GeoTIFF, 512 rows at a time (flat memory)."""
    if path.exists():
        return path
    vrt = build_vrt(width, height, path.parent, source)
    tmp = path.with_name(path.name + ".tmp")
    profile = _tiff_profile(width, height, nodata, source)
    with (
        rasterio.Env(GDAL_CACHEMAX=256 * 1024 * 1024),
        rasterio.open(vrt) as src,
        rasterio.open(tmp, "w", **profile) as dst,
    ):
        for y in range(0, height, 512):
            win = Window(0, y, width, min(512, height - y))
            data = src.read(window=win)
            if edit is not None:
                data = edit(data, y)
            dst.write(data, window=win)
    os.replace(tmp, path)
    return path


def build_tiff(width: int, height: int | None = None, out_dir: Path = CACHE, source: Path = MOSAIC) -> Path:
    height = height or width
    out_dir.mkdir(parents=True, exist_ok=True)
    return _write_tiff(out_dir / f"{_name(source)}_{width}x{height}.tif", width, height, None, source=source)


def build_nodata_tiff(width: int, out_dir: Path = CACHE) -> Path:
    """Lower-right triangle (x + y > 1.25 * width) is nodata=0; real zeros inside become 1, as producers do."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def collar(data: np.ndarray, y0: int) -> np.ndarray:
        data = np.maximum(data, 1)
        yy = np.arange(y0, y0 + data.shape[1])[:, None]
        xx = np.arange(width)[None, :]
        data[:, (xx + yy) > 1.25 * width] = 0
        return data

    return _write_tiff(out_dir / f"kampala_{width}x{width}_nodata.tif", width, width, 0, collar)


def nodata_share(width: int) -> float:
    """Share of the triangle x + y > 1.25 w in a w x w square."""
    return 0.75**2 / 2


def scene(size: int, kind: str = "tiff", out_dir: Path = CACHE) -> Scene:
    """kind: 'tiff', 'vrt' or 'nodata' (a tiff with a nodata collar)."""
    if kind == "vrt":
        return Scene(f"{size}² vrt", build_vrt(size, size, out_dir), size, size)
    if kind == "nodata":
        return Scene(f"{size}² nodata", build_nodata_tiff(size, out_dir), size, size, nodata_share(size))
    return Scene(f"{size}²", build_tiff(size, size, out_dir), size, size)


def mosaic_labels(crs) -> gpd.GeoDataFrame:
    """The mosaic's building outlines in `crs`, clipped to the mosaic."""
    from fpn_geo.truth import read_labels

    with rasterio.open(MOSAIC) as src:
        bounds = src.bounds
    truth = read_labels(LABELS, crs).clip(shapely.box(*bounds))
    return truth[truth.area > 0].reset_index(drop=True)


def scene_labels(path: str | Path, source: Path = MOSAIC) -> gpd.GeoDataFrame:
    """The mosaic's labels repeated onto every copy of the mosaic (or of `source`, a coarse copy) in a scene."""
    m = _mosaic_profile(source)
    with rasterio.open(path) as src:
        crs, bounds, width, height = src.crs, src.bounds, src.width, src.height
    base = mosaic_labels(crs)
    t = m["transform"]
    parts = []
    for y in range(0, height, m["height"]):
        for x in range(0, width, m["width"]):
            parts.append(base.geometry.translate(xoff=x * t.a, yoff=y * t.e))
    geoms = gpd.GeoSeries(pd.concat(parts, ignore_index=True), crs=crs).clip(shapely.box(*bounds))
    geoms = geoms[~geoms.is_empty & (geoms.area > 0)]
    return gpd.GeoDataFrame(geometry=geoms.reset_index(drop=True), crs=crs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sizes", nargs="*", type=int, default=[2048, 8192, 16384])
    ap.add_argument("--nodata", type=int, default=8192, help="side of the scene with a nodata collar (0: none)")
    args = ap.parse_args()
    for s in args.sizes:
        t0 = time.perf_counter()
        sc = scene(s)
        print(f"{sc.name:>14}  {sc.path}  {sc.path.stat().st_size / 1e6:8.1f} MB  {time.perf_counter() - t0:6.1f} s")
    if args.nodata:
        t0 = time.perf_counter()
        sc = scene(args.nodata, "nodata")
        print(f"{sc.name:>14}  {sc.path}  {sc.path.stat().st_size / 1e6:8.1f} MB  {time.perf_counter() - t0:6.1f} s")


if __name__ == "__main__":
    main()
