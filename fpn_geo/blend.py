"""Blending a block: the overlapping window predictions that reach into a block, weighted by a smooth ramp.

Runs in torch on the predictor's device, so on a GPU the canvas never leaves it: only the finished uint8
probabilities are copied back. The sums run in the block's window order, so the same block gives the same
bytes wherever it is computed.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from fpn_geo.tiling import Block, Grid, GridWindow


def ramp(size: int, overlap: int) -> np.ndarray:
    """1 in the middle, a sin² ramp down over `overlap` px at each end; never 0 (the ends are half a pixel in)."""
    r = np.ones(size, dtype=np.float32)
    if overlap > 0:
        t = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        r[:overlap] = np.sin(np.pi / 2 * t) ** 2
        r[-overlap:] = r[:overlap][::-1]
    return r


def blend_weights(size: int, overlap: int) -> np.ndarray:
    """A window's weights: the outer product of two ramps. Separable, so the weight sums are too (`BlockCanvas`)."""
    r = ramp(size, overlap)
    return np.outer(r, r)


def weight_sums(start: int, stop: int, grid: Grid, windows: range) -> np.ndarray:
    """Sum over the windows `windows` (indexes along one axis) of their ramps, at each of positions [start, stop)."""
    r = ramp(grid.size, grid.overlap)
    out = np.zeros(stop - start, np.float32)
    for i in windows:
        a = i * grid.stride
        if a >= stop:
            break
        lo, hi = max(a, start), min(a + grid.size, stop)
        if lo < hi:
            out[lo - start : hi - start] += r[lo - a : hi - a]
    return out


@functools.lru_cache(maxsize=8)
def _weights_on(size: int, overlap: int, device: str) -> torch.Tensor:
    return torch.from_numpy(blend_weights(size, overlap)).to(device)


def overlap_slices(window: GridWindow, hw: tuple[int, int], block: Block) -> tuple[slice, slice, slice, slice] | None:
    """(rows, cols) in the window's prediction and (rows, cols) in the block where a window of in-grid size hw
    meets the block; None when they do not meet."""
    r0, r1 = max(window.row_off, block.y0), min(window.row_off + hw[0], block.y1)
    c0, c1 = max(window.col_off, block.x0), min(window.col_off + hw[1], block.x1)
    if r0 >= r1 or c0 >= c1:
        return None
    return (
        slice(r0 - window.row_off, r1 - window.row_off), slice(c0 - window.col_off, c1 - window.col_off),
        slice(r0 - block.y0, r1 - block.y0), slice(c0 - block.x0, c1 - block.x0),
    )


Probs = np.ndarray | torch.Tensor


class BlockCanvas:
    """Weighted sums of the predictions over one block; `finish()` gives uint8 (K, h, w) on the host.

    On a CUDA device the sums are torch tensors there; on the CPU they are numpy arrays (small torch ops on
    the CPU cost milliseconds each in thread hand-offs, numpy's a tenth of that).
    """

    def __init__(
        self, block: Block, channels: int, grid: Grid, rows: range, cols: range, device: str | torch.device = "cpu"
    ) -> None:
        """block: the area to blend; rows, cols: the window rows and columns that will be added (all that reach in)."""
        self.block = block
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        h, w = block.shape
        # Every window counts in the weight sums, also one that held no data (it adds 0): so the sums depend on
        # geometry alone and factor into a row and a column vector instead of an (h, w) array.
        wy = weight_sums(block.y0, block.y1, grid, rows)
        wx = weight_sums(block.x0, block.x1, grid, cols)
        # torch tensors on CUDA, numpy arrays on the CPU: the code below uses what both support
        self.sums: Any
        self.weights: Any
        self.wy: Any
        self.wx: Any
        if self.cuda:
            self.sums = torch.zeros((channels, h, w), dtype=torch.float32, device=self.device)
            self.weights = _weights_on(grid.size, grid.overlap, str(self.device))
            self.wy, self.wx = torch.from_numpy(wy).to(self.device), torch.from_numpy(wx).to(self.device)
        else:
            self.sums = np.zeros((channels, h, w), np.float32)
            self.weights = blend_weights(grid.size, grid.overlap)
            self.wy, self.wx = wy, wx

    def add(self, window: GridWindow, piece: Probs, at: tuple[slice, slice, slice, slice]) -> None:
        """Add `piece`, the part of a window's prediction that lies in this block (see `crop`)."""
        wr, wc, br, bc = at
        weights = self.weights[wr, wc]
        if self.cuda:
            piece = torch.as_tensor(piece).to(self.device, torch.float32)
        self.sums[:, br, bc] += piece * weights

    def finish(self, host: bool = True) -> Probs:
        """round(sums / weights) as uint8, in place: no block-sized temporaries. On CUDA with `host=False` the
        result stays on the device, for labelling there."""
        if self.cuda:
            self.sums /= self.wy[:, None] * self.wx[None, :]
            out = self.sums.round_().clamp_(0, 255).to(torch.uint8)
            return out.cpu().numpy() if host else out
        out = np.empty(self.sums.shape, np.uint8)
        inv_x = 1.0 / self.wx
        for y in range(0, out.shape[1], 256):  # a band of rows at a time
            s = self.sums[:, y : y + 256]
            s *= (1.0 / self.wy[y : y + 256])[:, None] * inv_x[None, :]
            np.rint(s, out=s)
            np.clip(s, 0, 255, out=s)
            out[:, y : y + 256] = s
        return out


def crop(window: GridWindow, probs: Probs, block: Block) -> tuple[Probs, tuple] | None:
    """The part of a window's (K, h, w) prediction inside `block`, and where it goes; None if it misses the block."""
    at = overlap_slices(window, (probs.shape[1], probs.shape[2]), block)
    if at is None:
        return None
    return probs[:, at[0], at[1]], at
