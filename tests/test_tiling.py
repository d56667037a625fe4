import numpy as np
import pytest

from fpn_geo.errors import ConfigError
from fpn_geo.tiling import make_grid


@pytest.mark.parametrize("h,w,size,overlap", [(2048, 3072, 512, 64), (1000, 777, 256, 32), (100, 50, 512, 64), (513, 512, 512, 0)])
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
