"""Seamless stitching: overlapping window predictions blended with a smooth ramp, written strip by strip.

Only the strips that still await a window are in memory: about (window / stride + 1) strips of
the scene's width, whatever its height, and whatever order the windows arrive in.
"""

from __future__ import annotations

import os
from pathlib import Path

from collections import Counter
from collections.abc import Callable

import numpy as np
import rasterio
from rasterio.shutil import copy as rio_copy
from rasterio.windows import Window

from fpn_geo.scene import SceneInfo
from fpn_geo.tiling import Grid, GridWindow

WriteStrip = Callable[[Window, np.ndarray], None]


def blend_weights(size: int, overlap: int, floor: float = 1e-3) -> np.ndarray:
    """1 in the middle, a sin² ramp down over `overlap` px at each side; never 0, so lone pixels keep their value."""
    ramp = np.ones(size, dtype=np.float32)
    if overlap > 0:
        t = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        ramp[:overlap] = np.sin(np.pi / 2 * t) ** 2
        ramp[-overlap:] = ramp[:overlap][::-1]
    return np.maximum(np.outer(ramp, ramp), floor)


def _normalize_into(out: np.ndarray, sums: np.ndarray, wsum: np.ndarray, cols: int = 2048) -> None:
    """out = round(sums / wsum) as uint8, a few columns at a time: no strip-sized float temporaries."""
    for x in range(0, out.shape[2], cols):
        s, w = sums[:, :, x : x + cols], wsum[:, x : x + cols]
        q = np.divide(s, w, out=np.zeros_like(s), where=w > 0)
        np.rint(q, out=q)
        out[:, :, x : x + cols] = q


class Stitcher:
    """Accumulates weighted predictions per strip (grid-row band) and hands each strip to `write` once final."""

    def __init__(self, grid: Grid, channels: int, write: WriteStrip) -> None:
        self.grid = grid
        self.channels = channels
        self.write = write
        self.weights = blend_weights(grid.size, grid.overlap)
        # Buffers are allocated in bands of `band` rows, when first touched: a grid row's windows
        # reach only the top `overlap` rows of the next strip, so that strip costs `overlap` rows,
        # not `stride`, until its own windows arrive. Peak: about `size` rows of the scene's width.
        self.band = max(32, grid.overlap)
        self.sums: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        self.done_per_row: Counter[int] = Counter()
        self.next_strip = 0

    def strip_rows(self, k: int) -> tuple[int, int]:
        s = self.grid.stride
        return k * s, (self.grid.height if k == self.grid.rows - 1 else (k + 1) * s)

    def strip_of(self, y: int) -> int:
        return min(y // self.grid.stride, self.grid.rows - 1)

    def _band(self, k: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Band j of strip k: rows y0 + j*band .. of the strip, (sums (K, r, W), weight sums (r, W))."""
        bands = self.sums.setdefault(k, {})
        if j not in bands:
            y0, y1 = self.strip_rows(k)
            rows = min(self.band, y1 - y0 - j * self.band)
            bands[j] = (np.zeros((self.channels, rows, self.grid.width), np.float32), np.zeros((rows, self.grid.width), np.float32))
        return bands[j]

    def add(self, window: GridWindow, probs: np.ndarray | None) -> None:
        """probs: (K, h, w) uint8 for the in-scene part of the window, or None if it held no data."""
        if probs is not None:
            _, h, w = probs.shape
            cols = slice(window.col_off, window.col_off + w)
            for k in range(self.strip_of(window.row_off), self.strip_of(window.row_off + h - 1) + 1):
                y0, y1 = self.strip_rows(k)
                a, b = max(y0, window.row_off), min(y1, window.row_off + h)
                for j in range((a - y0) // self.band, (b - 1 - y0) // self.band + 1):
                    r0 = y0 + j * self.band
                    c, d = max(a, r0), min(b, r0 + self.band)
                    sums, wsum = self._band(k, j)
                    src = slice(c - window.row_off, d - window.row_off)
                    weights = self.weights[src, :w]
                    sums[:, c - r0 : d - r0, cols] += probs[:, src].astype(np.float32) * weights
                    wsum[c - r0 : d - r0, cols] += weights
        self.done_per_row[window.row] += 1
        self._flush_ready()

    def _flush_ready(self) -> None:
        """Strip k is final once grid rows 0..k are all in: later rows start below it."""
        while self.next_strip < self.grid.rows and self.done_per_row[self.next_strip] == self.grid.cols:
            k = self.next_strip
            y0, y1 = self.strip_rows(k)
            out = np.zeros((self.channels, y1 - y0, self.grid.width), np.uint8)
            for j, (sums, wsum) in self.sums.pop(k, {}).items():
                _normalize_into(out[:, j * self.band : j * self.band + wsum.shape[0]], sums, wsum)
            self.write(Window(0, y0, self.grid.width, y1 - y0), out)
            self.next_strip += 1

    @property
    def finished(self) -> bool:
        return self.next_strip == self.grid.rows

    @property
    def strips_in_memory(self) -> int:
        return len(self.sums)


def probability_profile(info: SceneInfo, channels: int) -> dict:
    """An uncompressed tiled GeoTIFF: strips land anywhere in its tiles without re-compressing them."""
    return dict(
        driver="GTiff", width=info.width, height=info.height, count=channels, dtype="uint8",
        crs=info.crs_wkt, transform=info.affine, tiled=True, blockxsize=512, blockysize=512, BIGTIFF="IF_SAFER",
    )


def write_cog(src_path: str, dst_path: str) -> None:
    """Copy the stitched raster into a compressed Cloud-Optimized GeoTIFF; GDAL streams it block by block."""
    rio_copy(
        src_path, dst_path, driver="COG", COMPRESS="DEFLATE", PREDICTOR="2", BLOCKSIZE="512",
        OVERVIEW_RESAMPLING="AVERAGE", BIGTIFF="IF_SAFER",
    )


def band_descriptions(channels: int) -> tuple[str, ...]:
    return ("building_probability", "contact_probability")[:channels]


def describe_bands(dst: rasterio.io.DatasetWriter, channels: int) -> None:
    for i, name in enumerate(band_descriptions(channels), start=1):
        dst.set_band_description(i, name)
    dst.update_tags(scale="probability x 255")


def write_probability_style(prob_path: Path) -> Path:
    """A QML beside the COG: QGIS loads NAME.qml as the default style of NAME.tif (a pseudocolour ramp on band 1)."""
    qml = prob_path.with_suffix(".qml")
    tmp = qml.with_name(f".{qml.name}.tmp")
    tmp.write_text((Path(__file__).parent / "styles" / "probability.qml").read_text())
    os.replace(tmp, qml)
    return qml
