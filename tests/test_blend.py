"""Blending inside blocks: seamless across windows, and equal to the whole-scene blend in every block's interior."""

import numpy as np
import pytest
import torch

from fpn_geo.blend import BlockCanvas, blend_weights, crop, weight_sums
from fpn_geo.tiling import make_blocks, make_grid


def field(h: int, w: int) -> np.ndarray:
    """A smooth 0-255 field: any seam or misplaced window shows as a jump."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([127.5 + 120 * np.sin(x / 37.0) * np.cos(y / 53.0), np.full((h, w), 40.0, np.float32)])


def blend_layout(
    truth: np.ndarray, size: int, overlap: int, block_windows: int, device: str = "cpu", disagree: bool = False
) -> np.ndarray:
    """Every block blended from window crops of `truth` (each window off by its own amount if `disagree`), pasted
    back together."""
    _, h, w = truth.shape
    grid = make_grid(h, w, size, overlap)
    layout = make_blocks(grid, block_windows)
    out = np.zeros(truth.shape, np.uint8)
    for block in layout:
        canvas = BlockCanvas(block, 2, grid, *layout.window_ranges(block), device)
        for win in layout.windows(block):
            probs = truth[:, win.row_off : win.row_off + size, win.col_off : win.col_off + size]
            if disagree:  # a missing halo window or a misplaced one changes the blend where windows overlap
                probs = np.clip(probs + (win.row * 37 + win.col * 11) % 60 - 30, 0, 255)
            part = crop(win, torch.from_numpy(probs) if device != "cpu" else probs, block)
            if part is not None:
                canvas.add(win, *part)
        out[:, block.y0 : block.y1, block.x0 : block.x1] = canvas.finish()
    return out


def test_a_smooth_field_comes_back_without_seams():
    truth = field(700, 900)
    out = blend_layout(truth, 256, 32, 2)
    assert np.abs(out.astype(int) - np.rint(truth).astype(int)).max() <= 1


@pytest.mark.parametrize("block_windows", [1, 2, 3])
def test_every_block_equals_the_whole_scene_blend(block_windows):
    """The halo makes it so: blocks of 1, 2 or 3 windows give the bytes one scene-sized block gives."""
    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 255, (2, 600, 830)).astype(np.float32)  # noise shows any misplaced pixel
    whole = blend_layout(noise, 128, 32, 1000, disagree=True)
    assert np.array_equal(blend_layout(noise, 128, 32, block_windows, disagree=True), whole)
    assert not np.array_equal(whole, blend_layout(noise, 128, 32, 1000))  # the windows' disagreement shows


def test_overlapping_windows_that_disagree_blend_by_the_ramp():
    """Two windows that say 0 and 255: the blend crosses their overlap smoothly, the same in every block layout."""
    size, overlap = 128, 32
    grid = make_grid(128, 224, size, overlap)
    assert grid.cols == 2
    results = []
    for bw in (1, 2):
        layout = make_blocks(grid, bw)
        out = np.zeros((1, 128, 224), np.uint8)
        for block in layout:
            canvas = BlockCanvas(block, 1, grid, *layout.window_ranges(block))
            for win in layout.windows(block):
                probs = np.full((1, 128, min(size, 224 - win.col_off)), 255.0 * win.col, np.float32)
                part = crop(win, probs, block)
                if part is not None:
                    canvas.add(win, *part)
            out[:, block.y0 : block.y1, block.x0 : block.x1] = canvas.finish()
        results.append(out)
    assert np.array_equal(results[0], results[1])
    row = results[0][0, 64].astype(int)
    assert row[0] == 0 and row[-1] == 255 and (np.diff(row) >= 0).all() and 0 < row[96 + 16] < 255


def test_blend_weights_ramp_and_never_zero():
    w = blend_weights(64, 16)
    assert w.min() > 0 and w[32, 32] == 1.0 and w[0, 32] < 0.1


def test_weight_sums_are_those_of_every_window_added_up():
    grid = make_grid(300, 500, 128, 32)
    full = np.zeros((300 + 128, 500 + 128), np.float32)
    for win in grid:
        full[win.row_off : win.row_off + 128, win.col_off : win.col_off + 128] += blend_weights(128, 32)
    wy, wx = weight_sums(0, 300, grid, range(grid.rows)), weight_sums(0, 500, grid, range(grid.cols))
    assert np.allclose(np.outer(wy, wx), full[:300, :500], rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_gpu_canvas_gives_the_cpu_bytes():
    truth = field(500, 700)
    assert (
        np.abs(blend_layout(truth, 256, 32, 1, "cuda").astype(int) - blend_layout(truth, 256, 32, 1).astype(int)).max()
        <= 1
    )
