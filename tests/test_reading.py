"""A scene with no nodata, mask or alpha skips reading its mask, and reads the same windows."""

import numpy as np
import rasterio

from fpn_geo.reading import all_valid, read_window
from fpn_geo.tiling import make_grid
from tests.doubles import write_raster


def test_an_all_valid_scene_reads_the_same_windows_without_its_mask(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (3, 300, 260), dtype=np.uint8)
    plain = write_raster(tmp_path / "plain.tif", data)
    with_nodata = write_raster(tmp_path / "nodata.tif", data, nodata=0)
    with rasterio.open(plain) as src, rasterio.open(with_nodata) as other:
        assert all_valid(src) and not all_valid(other)
        grid = make_grid(450, 390, 128, 32)  # the scene upsampled 1.5x: fractional windows, resampled reads
        for w in grid:
            masked = read_window(src, w, (1, 2, 3), 128, 1.5, (450, 390))
            unmasked = read_window(src, w, (1, 2, 3), 128, 1.5, (450, 390), masked=False)
            assert masked is not None and unmasked is not None
            assert np.array_equal(masked.image, unmasked.image)
            assert np.array_equal(masked.valid, unmasked.valid) and masked.valid.all()
