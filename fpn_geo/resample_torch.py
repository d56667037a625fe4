"""A window's pixels resampled to the model grid in torch, where the model runs: GDAL's bilinear, done as two
small matrix products, so a CUDA host uploads each window at the scene's own resolution as uint8 and its cores
only decode.

`fpn_geo.reading.read_window` asks GDAL for the window at the model's size (`out_shape`, bilinear). For a
fractional window GDAL weighs, along each axis, the source pixels within one output pixel's footprint (at least
one source pixel) with a triangle that spans it, and divides by the weights' sum; source pixels outside the
scene are left out, not mirrored. `axis_weights` builds that as a matrix, so the resampled window is
`wy @ pixels @ wx.T`, rounded as GDAL rounds to uint8: within one step of 255 of what GDAL returns (rounding of
its float intermediate), identical almost everywhere.

Only where that is exact in kind: uint8 bands fed as they are (identity radiometry), no nodata, mask or alpha
(GDAL's weights leave masked pixels out), and no overview GDAL could read from instead (overviews serve only
downsampling). Elsewhere the host path reads as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from fpn_geo.reading import all_valid, scene_window
from fpn_geo.tiling import GridWindow


def axis_span(off: float, size: float, n_out: int, n_src: int) -> tuple[int, int]:
    """The source pixels [first, stop) that GDAL's bilinear reads for `n_out` outputs over [off, off + size)."""
    ratio = size / n_out
    radius = 1.0 / min(1.0, 1.0 / ratio)  # the triangle's half-width in source pixels: 1, or an output's footprint
    first = math.floor((0.5 * ratio + off) - radius + 0.5)
    stop = int((n_out - 0.5) * ratio + off + radius + 0.5)
    return max(first, 0), min(stop, n_src)


def axis_weights(
    off: float, size: float, n_out: int, n_src: int, device: torch.device | str = "cpu"
) -> tuple[int, torch.Tensor]:
    """(first source pixel, (n_out, span) float64 weights): GDAL's bilinear along one axis, rows summing to 1."""
    ratio = size / n_out
    shrink = min(1.0, 1.0 / ratio)
    radius = 1.0 / shrink
    first, stop = axis_span(off, size, n_out, n_src)
    centre = (torch.arange(n_out, dtype=torch.float64, device=device) + 0.5) * ratio + off
    start = torch.floor(centre - radius + 0.5).clamp(min=first)
    end = torch.floor(centre + radius + 0.5).clamp(max=stop)  # C's cast of a positive double: floor
    k = torch.arange(first, stop, dtype=torch.float64, device=device)
    inside = (k >= start[:, None]) & (k < end[:, None])
    w = torch.where(inside, (1.0 - (shrink * (k - centre[:, None] + 0.5)).abs()).clamp(min=0.0), 0.0)
    sums = w.sum(dim=1, keepdim=True)
    return first, torch.where(sums != 0, w / torch.where(sums != 0, sums, 1.0), 0.0)


def gdal_bilinear(pixels: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor) -> torch.Tensor:
    """(bands, rows, cols) source pixels -> (bands, n_out_y, n_out_x) uint8, rounded as GDAL rounds: its sums
    (double) are stored as float32 and then rounded to nearest, so a sum a hair under k + 0.5 goes up."""
    out = (wy @ pixels.to(torch.float64) @ wx.T).to(torch.float32)
    return torch.floor(out + 0.5).clamp_(0, 255).to(torch.uint8)


def symmetric_index(n: int, size: int) -> np.ndarray:
    """Indices that pad n values to `size` as np.pad(mode="symmetric") does (reflected, edge repeated)."""
    return np.pad(np.arange(n), (0, size - n), mode="symmetric")


@dataclass(frozen=True)
class SourceWindow:
    """A window's pixels at the scene's resolution, to be resampled on the model's device (`to_model`).

    Stands where `fpn_geo.reading.WindowData` stands in a batch: the same window, valid mask and in-grid size.
    """

    window: GridWindow
    pixels: np.ndarray  # (bands, rows, cols) uint8: the source pixels the bilinear weights reach
    frac: tuple[float, float, float, float]  # the fractional window in the scene: col_off, row_off, width, height
    scene_hw: tuple[int, int]  # the scene's height and width: GDAL leaves out what lies past them
    valid: np.ndarray  # (h, w) bool: all valid (only mask-free scenes come this way)
    model_hw: tuple[int, int]

    def to_model(self, model_size: int, device: torch.device | str) -> torch.Tensor:
        """(bands, model_size, model_size) uint8 on `device`: what `read_window` gives, resampled there."""
        mh, mw = self.model_hw
        c0, r0, w, h = self.frac
        _, wy = axis_weights(r0, h, mh, self.scene_hw[0], device)  # `pixels` start at the span's first pixel
        _, wx = axis_weights(c0, w, mw, self.scene_hw[1], device)
        pixels = torch.from_numpy(self.pixels).to(device, non_blocking=True)
        image = gdal_bilinear(pixels, wy, wx)
        if (mh, mw) != (model_size, model_size):  # mirrored as read_window pads
            iy = torch.from_numpy(symmetric_index(mh, model_size)).to(device)
            ix = torch.from_numpy(symmetric_index(mw, model_size)).to(device)
            image = image[:, iy][:, :, ix]
        return image


def resamples_as_gdal(src: rasterio.DatasetReader, bands: tuple[int, ...], scale: float) -> bool:
    """Whether `SourceWindow` gives what GDAL gives for this scene: uint8 bands, nothing masked, a real resample,
    and no overview GDAL could take instead of the full-resolution pixels."""
    if scale == 1.0 or not all_valid(src):
        return False
    if any(src.dtypes[b - 1] != "uint8" for b in bands):
        return False
    return scale > 1.0 or not any(src.overviews(b) for b in bands)


def read_source_window(
    src: rasterio.DatasetReader, window: GridWindow, bands: tuple[int, ...], scale: float,
    grid_hw: tuple[int, int] | None = None,
) -> SourceWindow:
    """The scene pixels `read_window` would resample for this window, at their own resolution (one decode, no
    resampling on the host)."""
    grid_hw = grid_hw or (src.height, src.width)
    win, (mh, mw) = scene_window(window, grid_hw, scale, (src.height, src.width))
    c_first, c_stop = axis_span(win.col_off, win.width, mw, src.width)
    r_first, r_stop = axis_span(win.row_off, win.height, mh, src.height)
    pixels = src.read(list(bands), window=Window(c_first, r_first, c_stop - c_first, r_stop - r_first))
    frac = (win.col_off, win.row_off, win.width, win.height)
    return SourceWindow(window, pixels, frac, (src.height, src.width), np.ones((mh, mw), dtype=bool), (mh, mw))
