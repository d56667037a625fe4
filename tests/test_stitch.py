import random

import numpy as np

from fpn_geo.stitch import Stitcher, blend_weights
from fpn_geo.tiling import make_grid


def run_stitch(grid, predict, order=None):
    out = np.zeros((1, grid.height, grid.width), np.uint8)
    peak = 0

    def write(window, data):
        out[:, window.row_off : window.row_off + window.height, :] = data

    st = Stitcher(grid, 1, write)
    wins = list(grid)
    if order:
        order(wins)
    for w in wins:
        h = min(w.size, grid.height - w.row_off)
        ww = min(w.size, grid.width - w.col_off)
        st.add(w, predict(w, h, ww))
        peak = max(peak, st.strips_in_memory)
    assert st.finished
    return out, peak


def test_constant_prediction_stitches_without_seams():
    grid = make_grid(1000, 1300, 256, 64)
    out, _ = run_stitch(grid, lambda w, h, ww: np.full((1, h, ww), 200, np.uint8))
    assert out.min() == 200 and out.max() == 200


def test_smooth_field_is_reproduced_across_window_edges():
    grid = make_grid(700, 900, 256, 64)
    yy, xx = np.mgrid[0:700, 0:900]
    field = ((np.sin(yy / 50) + np.cos(xx / 70) + 2) * 60).astype(np.uint8)
    out, _ = run_stitch(grid, lambda w, h, ww: field[None, w.row_off : w.row_off + h, w.col_off : w.col_off + ww])
    assert np.abs(out[0].astype(int) - field).max() <= 1


def test_out_of_order_windows_give_the_same_raster_and_bounded_memory():
    grid = make_grid(2000, 700, 256, 32)
    rng = np.random.default_rng(0)
    preds = {w: rng.integers(0, 256, (1, min(256, 2000 - w.row_off), min(256, 700 - w.col_off)), dtype=np.uint8) for w in grid}
    a, peak_a = run_stitch(grid, lambda w, h, ww: preds[w])

    def shuffle_within_pairs_of_rows(wins):  # out of order, as Dask returns them, but bounded in flight
        chunks = [wins[i : i + 2 * grid.cols] for i in range(0, len(wins), 2 * grid.cols)]
        for c in chunks:
            random.Random(1).shuffle(c)
        wins[:] = [w for c in chunks for w in c]

    b, peak_b = run_stitch(grid, lambda w, h, ww: preds[w], shuffle_within_pairs_of_rows)
    assert np.array_equal(a, b)
    assert peak_a <= 3 and peak_b <= 4 < grid.rows


def test_empty_windows_leave_zero():
    grid = make_grid(300, 300, 128, 32)
    out, _ = run_stitch(grid, lambda w, h, ww: None)
    assert out.max() == 0


def test_blend_weights_ramp_and_never_zero():
    w = blend_weights(256, 64)
    assert w.min() > 0 and w[128, 128] == 1.0 and w[0, 128] < 0.01
