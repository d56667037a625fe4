"""The probability raster, assembled from blocks: each block hands back its uint8 probabilities as a small
compressed GeoTIFF, and GDAL (with its own threads) turns the mosaic of them into one Cloud-Optimized GeoTIFF.

No uncompressed full-scene raster is ever made, and no process has to hold or blend the whole scene.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from rasterio.shutil import copy as rio_copy
from rasterio.vrt import WarpedVRT

from fpn_geo.georef import Georef
from fpn_geo.outputs import write_text_atomic
from fpn_geo.tiling import Block

BAND_NAMES = ("building_probability", "contact_probability")


def encode_tile(probs: np.ndarray, block: Block, georef: Georef) -> bytes:
    """A block's (K, h, w) uint8 probabilities as compressed GeoTIFF bytes, placed on the grid: what crosses the
    network.

    LZW with a horizontal predictor: 6-10x faster to encode than DEFLATE's default level (measured on a
    1792² block: 0.05 s against 0.5 s) at about the same size; the COG re-encodes the tiles anyway.
    """
    k, h, w = probs.shape
    transform = georef.affine * Affine.translation(block.x0, block.y0)
    profile = dict(driver="GTiff", width=w, height=h, count=k, dtype="uint8", crs=georef.crs_wkt, transform=transform,
                   compress="LZW", predictor=2, tiled=w >= 256 and h >= 256, blockxsize=256, blockysize=256)
    if not profile["tiled"]:
        del profile["blockxsize"], profile["blockysize"]
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(probs)
        return mem.read()


def _mosaic_vrt(tiles: Sequence[tuple[Block, Path]], georef: Georef, channels: int) -> str:
    """A VRT that lays the block tiles side by side on the grid."""
    t = georef.affine
    bands = []
    for b in range(1, channels + 1):
        sources = "".join(
            f'<ComplexSource><SourceFilename relativeToVRT="0">{escape(str(path))}</SourceFilename>'
            f"<SourceBand>{b}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{blk.x1 - blk.x0}" ySize="{blk.y1 - blk.y0}"/>'
            f'<DstRect xOff="{blk.x0}" yOff="{blk.y0}" xSize="{blk.x1 - blk.x0}" '
            f'ySize="{blk.y1 - blk.y0}"/></ComplexSource>'
            for blk, path in tiles
        )
        bands.append(
            f'<VRTRasterBand dataType="Byte" band="{b}"><Description>{BAND_NAMES[b - 1]}</Description>'
            f"{sources}</VRTRasterBand>"
        )
    return (
        f'<VRTDataset rasterXSize="{georef.width}" rasterYSize="{georef.height}">'
        f"<SRS>{escape(georef.crs_wkt)}</SRS>"
        f"<GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>"
        '<Metadata><MDI key="scale">probability x 255</MDI></Metadata>'
        + "".join(bands) + "</VRTDataset>"
    )


def assemble_cog(
    tiles: Sequence[tuple[Block, Path]], grid: Georef, channels: int, dst: Path, scene: Georef | None = None
) -> None:
    """Write the tiles' mosaic as a COG on the model grid, or resampled onto `scene`'s grid when given."""
    vrt = _mosaic_vrt(tiles, grid, channels)
    options = dict(driver="COG", COMPRESS="DEFLATE", PREDICTOR="2", BLOCKSIZE="512", OVERVIEW_RESAMPLING="AVERAGE",
                   BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS")
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), rasterio.open(vrt) as src:
        if scene is None:
            rio_copy(src, str(dst), **options)
        else:
            with WarpedVRT(src, crs=scene.crs, transform=scene.affine, width=scene.width, height=scene.height,
                           resampling=Resampling.bilinear) as warped:
                rio_copy(warped, str(dst), **options)


def write_tile(data: bytes, folder: Path, block: Block) -> Path:
    """Save a block's encoded probability tile into ``folder``; returns its path."""
    path = folder / f"block_{block.row}_{block.col}.tif"
    path.write_bytes(data)
    return path


def write_probability_style(prob_path: Path) -> Path:
    """A QML beside the COG: QGIS loads NAME.qml as the default style of NAME.tif (a pseudocolour ramp on band 1)."""
    qml = prob_path.with_suffix(".qml")
    return write_text_atomic(qml, (Path(__file__).parent / "styles" / "probability.qml").read_text())
