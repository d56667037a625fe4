"""Where to read: a grid of 32-aligned windows with overlap that covers every pixel of a scene.

Like torchgeo's samplers, this module never reads pixels; `fpn_geo.reading` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rasterio.windows import Window

from fpn_geo.errors import ConfigError

ALIGN = 32


@dataclass(frozen=True)
class GridWindow:
    """One window of the grid, in scene pixels. It may run past the scene's right or bottom edge."""

    row: int  # grid row and column: the stitcher uses them to know when a strip is complete
    col: int
    row_off: int
    col_off: int
    size: int

    def clipped(self, height: int, width: int) -> Window:
        """The part inside the scene, as a rasterio Window."""
        return Window(self.col_off, self.row_off, min(self.size, width - self.col_off), min(self.size, height - self.row_off))


@dataclass(frozen=True)
class Grid:
    """A regular grid: window side `size`, step `stride = size - overlap`, rows x cols windows."""

    height: int
    width: int
    size: int
    overlap: int
    rows: int
    cols: int

    @property
    def stride(self) -> int:
        return self.size - self.overlap

    def __len__(self) -> int:
        return self.rows * self.cols

    def __iter__(self):
        """Row-major order, so the stitcher can finish and free each strip early."""
        for r in range(self.rows):
            for c in range(self.cols):
                yield self.window(r, c)

    def window(self, row: int, col: int) -> GridWindow:
        return GridWindow(row, col, row * self.stride, col * self.stride, self.size)


def _count(length: int, size: int, stride: int) -> int:
    """Windows needed so that the last one reaches the end: the remainder is never skipped."""
    return 1 if length <= size else 1 + math.ceil((length - size) / stride)


def make_grid(height: int, width: int, size: int = 512, overlap: int = 64, align: int = ALIGN) -> Grid:
    """Use overlap of about the receptive field the model needs at window edges (32-128 px)."""
    if size <= 0 or size % align:
        raise ConfigError(f"window size {size} must be a positive multiple of {align}, e.g. {max(align, round(size / align) * align)}")
    if not 0 <= overlap < size // 2:
        raise ConfigError(f"overlap {overlap} must be >= 0 and < half the window ({size // 2})")
    if height <= 0 or width <= 0:
        raise ConfigError(f"scene size {height}x{width} is empty")
    stride = size - overlap
    return Grid(height, width, size, overlap, _count(height, size, stride), _count(width, size, stride))
