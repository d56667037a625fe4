"""Blending a block: the overlapping window predictions that reach into a block, weighted by a smooth ramp.

Runs in torch on the predictor's device, so on a GPU the canvas never leaves it: only the finished uint8
probabilities are copied back. The sums run in the block's window order, so the same block gives the same
bytes wherever it is computed.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from fpn_geo.tiling import Block, GridWindow


def blend_weights(size: int, overlap: int, floor: float = 1e-3) -> np.ndarray:
    """1 in the middle, a sin² ramp down over `overlap` px at each side; never 0, so lone pixels keep their value."""
    ramp = np.ones(size, dtype=np.float32)
    if overlap > 0:
        t = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        ramp[:overlap] = np.sin(np.pi / 2 * t) ** 2
        ramp[-overlap:] = ramp[:overlap][::-1]
    return np.maximum(np.outer(ramp, ramp), floor)


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

    def __init__(self, block: Block, channels: int, size: int, overlap: int, device: str | torch.device = "cpu") -> None:
        self.block = block
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        h, w = block.shape
        if self.cuda:
            self.sums = torch.zeros((channels, h, w), dtype=torch.float32, device=self.device)
            self.wsum = torch.zeros((h, w), dtype=torch.float32, device=self.device)
            self.weights = _weights_on(size, overlap, str(self.device))
        else:
            self.sums = np.zeros((channels, h, w), np.float32)
            self.wsum = np.zeros((h, w), np.float32)
            self.weights = blend_weights(size, overlap)

    def add(self, window: GridWindow, piece: Probs, at: tuple[slice, slice, slice, slice]) -> None:
        """Add `piece`, the part of a window's prediction that lies in this block (see `crop`)."""
        wr, wc, br, bc = at
        weights = self.weights[wr, wc]
        if self.cuda:
            piece = torch.as_tensor(piece).to(self.device, torch.float32)
        self.sums[:, br, bc] += piece * weights
        self.wsum[br, bc] += weights

    def finish(self) -> np.ndarray:
        """round(sums / weights) as uint8; every pixel of a block is under at least one window with data, or 0."""
        if self.cuda:
            probs = (self.sums / self.wsum.clamp_min(1e-12)).round_().clamp_(0, 255).to(torch.uint8)
            return probs.cpu().numpy()
        out = np.zeros(self.sums.shape, np.uint8)
        for x in range(0, out.shape[2], 2048):  # a few columns at a time: no block-sized float temporaries
            s, w = self.sums[:, :, x : x + 2048], self.wsum[:, x : x + 2048]
            q = np.divide(s, w, out=np.zeros_like(s), where=w > 0)
            np.rint(q, out=q)
            out[:, :, x : x + 2048] = q
        return out


def crop(window: GridWindow, probs: Probs, block: Block) -> tuple[Probs, tuple] | None:
    """The part of a window's (K, h, w) prediction inside `block`, and where it goes; None if it misses the block."""
    at = overlap_slices(window, (probs.shape[1], probs.shape[2]), block)
    if at is None:
        return None
    return probs[:, at[0], at[1]], at
