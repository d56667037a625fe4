"""Shared fixtures: real scenes from data/, small checkpoints made on the fly, tiny synthetic rasters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from fpn_geo.model import ModelMeta, build_model, save_checkpoint

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
KAMPALA = DATA / "kampala_oam" / "mosaic_z21_12x8_3072x2048.tif"
KAMPALA_Z20 = DATA / "kampala_oam" / "mosaic_z20_6x4_1536x1024.tif"
KAMPALA_LABELS = DATA / "kampala_oam" / "labels.geojson"


def make_checkpoint(path: Path, depth: int = 18, bands: int = 3, classes=("background", "building", "contact"), seed: int = 0) -> Path:
    torch.manual_seed(seed)
    meta = ModelMeta(depth=depth, bands=tuple(range(1, bands + 1)), mean=(100.0,) * bands, std=(50.0,) * bands, classes=tuple(classes))
    save_checkpoint(build_model(meta), meta, path)
    return path


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A random-weights ResNet-18 FPN: meaningless polygons, real code path."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "r18.safetensors")


def write_raster(path: Path, data: np.ndarray, crs="EPSG:32636", transform=None, nodata=None, **kw) -> Path:
    count, h, w = data.shape
    profile = dict(driver="GTiff", width=w, height=h, count=count, dtype=data.dtype, nodata=nodata, **kw)
    if crs is not None:
        profile["crs"] = crs
    if transform is not False:
        profile["transform"] = transform or from_origin(500000, 40000, 0.3, 0.3)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture
def small_scene(tmp_path) -> Path:
    """A 200x300 crop of the real Kampala mosaic: fast end-to-end runs."""
    with rasterio.open(KAMPALA_Z20) as src:
        window = rasterio.windows.Window(100, 100, 300, 200)
        data = src.read(window=window)
        transform = src.window_transform(window)
        crs = src.crs
    return write_raster(tmp_path / "small.tif", data, crs=crs, transform=transform)
