"""Shared fixtures: real scenes from data/, small checkpoints made on the fly, tiny synthetic rasters.

Helpers and test doubles live in `tests/doubles.py`, shared with the benchmarks; import them from there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import rasterio

from tests.doubles import KAMPALA_Z20, make_checkpoint, write_raster


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A random-weights ResNet-18 FPN: meaningless polygons, real code path."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "r18.safetensors")


@pytest.fixture
def small_scene(tmp_path) -> Path:
    """A 200x300 crop of the real Kampala mosaic: fast end-to-end runs."""
    with rasterio.open(KAMPALA_Z20) as src:
        window = rasterio.windows.Window(100, 100, 300, 200)
        data = src.read(window=window)
        transform = src.window_transform(window)
        crs = src.crs
    return write_raster(tmp_path / "small.tif", data, crs=crs, transform=transform)
