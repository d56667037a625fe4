"""Where to read: chip positions in a source's pixels. Samplers never read pixels (as torchgeo's).

Use ``RandomChipSampler`` for training (random chips that never touch a held-out block) and
``GridChipSampler`` for validation (a regular grid with overlap over each held-out block).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from fpn_geo.errors import ConfigError


@dataclass(frozen=True)
class PixelBox:
    """A rectangle of pixels [row0, row1) x [col0, col1) of a training source: where a held-out block lies.

    Not ``tiling.Block`` (a scene's unit of work in the segment pipeline, with its windows)."""

    row0: int
    col0: int
    row1: int
    col1: int

    @property
    def height(self) -> int:
        return self.row1 - self.row0

    @property
    def width(self) -> int:
        return self.col1 - self.col0

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.row0, self.row1), slice(self.col0, self.col1)

    def intersects(self, row: int, col: int, size: int, gap: int = 0) -> bool:
        return not (
            row + size + gap <= self.row0
            or row >= self.row1 + gap
            or col + size + gap <= self.col0
            or col >= self.col1 + gap
        )


def fraction_block(
    fractions: tuple[float, float, float, float], height: int, width: int, margin: int = 0
) -> PixelBox:
    """A held-out block given as (left, top, right, bottom) fractions, in pixels of a ``height`` x ``width`` grid.

    Rounded outwards (a pixel partly inside counts as inside) and grown by ``margin`` pixels, clipped to the grid.
    Use the same fractions on every grid of a scene (native, 0.15 m, 0.30 m): the blocks cover the same ground.
    """
    import math

    left, top, right, bottom = fractions
    return PixelBox(
        max(0, math.floor(top * height) - margin), max(0, math.floor(left * width) - margin),
        min(height, math.ceil(bottom * height) + margin), min(width, math.ceil(right * width) + margin),
    )


@dataclass(frozen=True)
class ChipQuery:
    """A square chip of side ``size`` at (row, col) of source ``source``; may run past the edge (padded)."""

    source: int
    row: int
    col: int
    size: int


@dataclass(frozen=True)
class Extent:
    """What a sampler needs to know of a source: its size, its held-out block, its share of chips."""

    height: int
    width: int
    val_block: PixelBox | None = None
    weight: float = 1.0


class RandomChipSampler:
    """Training chips: a source drawn by weight, then a uniform position whose chip stays ``gap`` px clear of the
    held-out block.

    Yields ``length`` queries per iteration; the generator's state carries on across epochs.
    """

    def __init__(self, extents: Sequence[Extent], size: int, length: int, gap: int = 0, seed: int = 0) -> None:
        self.extents, self.size, self.length, self.gap = list(extents), size, length, gap
        self.rng = np.random.default_rng(seed)
        self._positions = [self._free_positions(e) for e in self.extents]
        usable = [i for i, p in enumerate(self._positions) if p is not None]
        if not usable:
            raise ConfigError(
                f"no {size}x{size} training chip fits outside the validation blocks of any source; "
                "use a smaller chip or a smaller val_block"
            )
        w = np.array([self.extents[i].weight for i in usable], dtype=float)
        self._usable, self._p = usable, w / w.sum()

    def _free_positions(self, e: Extent) -> tuple[np.ndarray, ...] | None:
        """Top-left rows and cols (1-px lattice) and which of them keep a chip clear of the block; None if none do.

        A source smaller than a chip offers corner 0 only; its chip hangs over the edge and is padded.
        """
        rows = np.arange(0, max(1, e.height - self.size + 1))
        cols = np.arange(0, max(1, e.width - self.size + 1))
        if e.val_block is None:
            return rows, cols, np.ones(len(rows), bool), np.ones(len(cols), bool)
        b, s, g = e.val_block, self.size, self.gap
        ok_r = (rows + s + g <= b.row0) | (rows >= b.row1 + g)
        ok_c = (cols + s + g <= b.col0) | (cols >= b.col1 + g)
        if not ok_r.any() and not ok_c.any():
            return None
        return rows, cols, ok_r, ok_c

    def _draw(self, i: int) -> tuple[int, int]:
        positions = self._positions[i]
        assert positions is not None  # _usable holds only the extents that have free positions
        rows, cols, ok_r, ok_c = positions
        # a chip is clear if it is clear in rows OR in columns; pick which, weighted by how many corners each offers
        n_r, n_c = ok_r.sum() * len(cols), ok_c.sum() * len(rows)
        if self.rng.random() < n_r / (n_r + n_c):
            return int(self.rng.choice(rows[ok_r])), int(self.rng.choice(cols))
        return int(self.rng.choice(rows)), int(self.rng.choice(cols[ok_c]))

    def __iter__(self) -> Iterator[ChipQuery]:
        for _ in range(self.length):
            i = self._usable[int(self.rng.choice(len(self._usable), p=self._p))]
            r, c = self._draw(i)
            yield ChipQuery(i, r, c, self.size)

    def __len__(self) -> int:
        return self.length


class GridChipSampler:
    """Validation chips: a grid of ``size`` windows, ``overlap`` apart, covering every held-out block exactly.

    The last row and column are moved back to end at the block's edge (no padding unless the block is smaller
    than a chip).
    """

    def __init__(self, extents: Sequence[Extent], size: int, overlap: int = 0) -> None:
        if overlap >= size:
            raise ConfigError(f"overlap {overlap} must be smaller than the chip size {size}")
        self.extents, self.size, self.overlap = list(extents), size, overlap

    @staticmethod
    def offsets(start: int, length: int, size: int, stride: int) -> list[int]:
        if length <= size:
            return [start]
        offs = list(range(start, start + length - size, stride)) + [start + length - size]
        return sorted(set(offs))

    def __iter__(self) -> Iterator[ChipQuery]:
        stride = self.size - self.overlap
        for i, e in enumerate(self.extents):
            b = e.val_block
            if b is None:
                continue
            for r in self.offsets(b.row0, b.height, self.size, stride):
                for c in self.offsets(b.col0, b.width, self.size, stride):
                    yield ChipQuery(i, r, c, self.size)

    def __len__(self) -> int:
        return sum(1 for _ in self)
