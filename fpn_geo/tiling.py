"""Where to read: a grid of 32-aligned windows with overlap that covers every pixel of a scene.

Like torchgeo's samplers, this module never reads pixels; `fpn_geo.reading` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rasterio.windows import Window

from fpn_geo.errors import ConfigError

if TYPE_CHECKING:
    from fpn_geo.config import SegmentConfig

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
        return Window(
            self.col_off, self.row_off, min(self.size, width - self.col_off), min(self.size, height - self.row_off)
        )


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
        raise ConfigError(
            f"window size {size} must be a positive multiple of {align}, e.g. {max(align, round(size / align) * align)}"
        )
    if not 0 <= overlap < size // 2:
        raise ConfigError(f"overlap {overlap} must be >= 0 and < half the window ({size // 2})")
    if height <= 0 or width <= 0:
        raise ConfigError(f"scene size {height}x{width} is empty")
    stride = size - overlap
    return Grid(height, width, size, overlap, _count(height, size, stride), _count(width, size, stride))


@dataclass(frozen=True)
class Block:
    """A task's share of the grid: it owns rows [y0, y1) and columns [x0, x1), in grid pixels.

    The owned area starts where its first window starts, so the one window row (and column) before it, whose
    overlap reaches in, is its halo: with it the blend inside the block equals the whole-scene blend.
    """

    row: int
    col: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


@dataclass(frozen=True)
class BlockLayout:
    """Blocks of `size` x `size` windows over a grid; use 4-16: bigger blocks mean fewer halo windows."""

    grid: Grid
    size: int
    rows: int
    cols: int

    def __len__(self) -> int:
        return self.rows * self.cols

    def __iter__(self):
        """Row-major: a block row completes before the next starts, so edge pieces can be joined and freed."""
        for r in range(self.rows):
            for c in range(self.cols):
                yield self.block(r, c)

    def _span(self, k: int, n_blocks: int, length: int) -> tuple[int, int]:
        step = self.size * self.grid.stride
        return k * step, (length if k == n_blocks - 1 else (k + 1) * step)

    def block(self, row: int, col: int) -> Block:
        y0, y1 = self._span(row, self.rows, self.grid.height)
        x0, x1 = self._span(col, self.cols, self.grid.width)
        return Block(row, col, y0, y1, x0, x1)

    def _window_span(self, a: int, b: int, n_windows: int) -> range:
        """Window indexes whose extent [i*stride, i*stride + size) reaches into [a, b)."""
        s = self.grid.stride
        first = max(0, -(-(a - self.grid.size + 1) // s))
        return range(first, min(n_windows, -(-b // s)))

    def windows(self, block: Block) -> list[GridWindow]:
        """Every window that reaches into the block, halo included, row-major (the order their blend sums run in)."""
        return [
            self.grid.window(r, c)
            for r in self._window_span(block.y0, block.y1, self.grid.rows)
            for c in self._window_span(block.x0, block.x1, self.grid.cols)
        ]

    def context(self, block: Block, margin: int) -> Block:
        """The block grown by `margin` px on each side, within the grid and under the block's own windows.

        Labelling sees this much of the neighbours, so a building cut by the block edge is split the same way
        on both sides. Its margins are blended from the block's windows only: an approximation, used only to
        decide labels, never written out.
        """
        rows = self._window_span(block.y0, block.y1, self.grid.rows)
        cols = self._window_span(block.x0, block.x1, self.grid.cols)
        s, size = self.grid.stride, self.grid.size
        return Block(
            block.row, block.col,
            max(block.y0 - margin, rows[0] * s), min(block.y1 + margin, (rows[-1]) * s + size, self.grid.height),
            max(block.x0 - margin, cols[0] * s), min(block.x1 + margin, (cols[-1]) * s + size, self.grid.width),
        )

    def window_ranges(self, block: Block) -> tuple[range, range]:
        """Indexes of the window rows and columns that reach into the block."""
        return self._window_span(block.y0, block.y1, self.grid.rows), self._window_span(
            block.x0, block.x1, self.grid.cols
        )

    def blocks_of(self, window: GridWindow) -> list[Block]:
        """The blocks a window reaches into (1 to 4)."""
        step = self.size * self.grid.stride
        y1, x1 = window.row_off + window.size, window.col_off + window.size
        rows = range(min(window.row_off // step, self.rows - 1), min((y1 - 1) // step, self.rows - 1) + 1)
        cols = range(min(window.col_off // step, self.cols - 1), min((x1 - 1) // step, self.cols - 1) + 1)
        return [self.block(r, c) for r in rows for c in cols]


    def groups(self, side: int) -> list[list[Block]]:
        """Square groups of side x side blocks, each row-major, in row-major order: one task's share of a scene.

        A group runs its blocks one after the other (memory of one block) and predicts a window its blocks share
        once, so only the group's edges cost halo windows.
        """
        return [
            [
                self.block(r, c)
                for r in range(r0, min(r0 + side, self.rows))
                for c in range(c0, min(c0 + side, self.cols))
            ]
            for r0 in range(0, self.rows, side)
            for c0 in range(0, self.cols, side)
        ]


def make_blocks(grid: Grid, size: int = 4) -> BlockLayout:
    """Group the grid's windows into blocks of ``size`` x ``size`` windows (ConfigError if size < 1)."""
    if size <= 0:
        raise ConfigError(f"block size {size} must be a positive number of windows, e.g. 8")
    return BlockLayout(grid, size, math.ceil(grid.rows / size), math.ceil(grid.cols / size))


def clamp_window(cfg: SegmentConfig, height: int, width: int, scale: float = 1.0) -> SegmentConfig:
    """A window no bigger than the scene (in model pixels, rounded up to 32): one window covers a small scene,
    instead of a window of --window pixels padded around it."""
    side = max(ALIGN, math.ceil(max(height, width) * scale / ALIGN) * ALIGN)
    if cfg.window <= side:
        return cfg
    overlap = min(cfg.overlap, side // 2 - 1)
    return cfg.model_copy(update={"window": side, "overlap": overlap})
