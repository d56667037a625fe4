"""Window grids and blocks: full coverage, order, refused sizes, and which windows reach each block."""

import numpy as np
import pytest

from fpn_geo.errors import ConfigError
from fpn_geo.tiling import make_grid


@pytest.mark.parametrize(
    "h,w,size,overlap", [(2048, 3072, 512, 64), (1000, 777, 256, 32), (100, 50, 512, 64), (513, 512, 512, 0)]
)
def test_grid_covers_every_pixel_including_remainders(h, w, size, overlap):
    grid = make_grid(h, w, size, overlap)
    covered = np.zeros((h, w), np.int32)
    for win in grid:
        assert win.size % 32 == 0
        covered[win.row_off : win.row_off + size, win.col_off : win.col_off + size] += 1
    assert covered.min() >= 1, "a pixel is not covered by any window"


def test_grid_is_row_major_and_does_not_overshoot_by_a_whole_window():
    grid = make_grid(1000, 1000, 256, 32)
    wins = list(grid)
    assert [(w.row, w.col) for w in wins] == sorted((w.row, w.col) for w in wins)
    last = wins[-1]
    assert last.row_off < 1000 and last.col_off < 1000


@pytest.mark.parametrize("size,overlap", [(500, 0), (0, 0), (512, 256), (512, -1)])
def test_bad_window_or_overlap_is_refused_with_the_value(size, overlap):
    with pytest.raises(ConfigError, match=str(size) if size % 32 else str(overlap)):
        make_grid(1000, 1000, size, overlap)


def test_blocks_cover_the_grid_once_and_their_windows_are_the_ones_that_reach_in():
    from fpn_geo.tiling import make_blocks

    grid = make_grid(2048, 3072, 512, 64)
    for size in (1, 2, 3, 8):
        layout = make_blocks(grid, size)
        covered = np.zeros((grid.height, grid.width), np.int32)
        for b in layout:
            covered[b.y0 : b.y1, b.x0 : b.x1] += 1
            reach = [
                w
                for w in grid
                if w.row_off < b.y1 and w.row_off + w.size > b.y0 and w.col_off < b.x1 and w.col_off + w.size > b.x0
            ]
            assert layout.windows(b) == reach
        assert (covered == 1).all()
        groups = layout.groups(2)
        assert sorted((b.row, b.col) for g in groups for b in g) == sorted((b.row, b.col) for b in layout)
