"""Windows resampled in torch (what a CUDA host does) equal GDAL's bilinear read (`read_window`) within one uint8
step, here on CPU tensors; the CUDA case skips without a GPU."""

import numpy as np
import pytest
import rasterio
import torch

from fpn_geo.georef import scaled_shape
from fpn_geo.reading import read_window
from fpn_geo.resample_torch import read_source_window, resamples_as_gdal
from fpn_geo.tiling import make_grid
from tests.doubles import write_raster


def scene(tmp_path, h=203, w=261, **kw):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (3, h, w), dtype=np.uint8)
    data[:, 40:90, 50:120] = 200  # flat areas and sharp edges beside the noise
    return write_raster(tmp_path / "scene.tif", data, tiled=True, blockxsize=64, blockysize=64, **kw)


def compare(path, scale: float, size: int, overlap: int, device: str = "cpu") -> tuple[int, int]:
    """(pixels that differ, pixels compared) over every window of the scene's grid; fails beyond one step."""
    differ = total = 0
    with rasterio.open(path) as src:
        grid_hw = scaled_shape(src.height, src.width, scale)
        for w in make_grid(*grid_hw, size, overlap):
            want = read_window(src, w, (1, 2, 3), size, scale, grid_hw, masked=False)
            got = read_source_window(src, w, (1, 2, 3), scale, grid_hw)
            assert want is not None and got.model_hw == want.model_hw
            image = got.to_model(size, device).cpu().numpy()
            assert image.dtype == np.uint8 and image.shape == want.image.shape
            d = np.abs(image.astype(int) - want.image.astype(int))
            assert d.max() <= 1, (scale, w)
            differ += int((d > 0).sum())
            total += d.size
    return differ, total


@pytest.mark.parametrize("scale", [0.6, 0.5, 0.3 / 0.7, 1.5, 2.0, 0.83])
def test_windows_resample_as_gdal_does(tmp_path, scale):
    differ, total = compare(scene(tmp_path), scale, 96, 16)
    assert differ < 0.001 * total  # off by one only where a sum lands within float32 rounding of k + 0.5


def test_a_scene_smaller_than_a_window_pads_as_read_window_does(tmp_path):
    differ, total = compare(scene(tmp_path, 37, 23), 0.6, 64, 0)
    assert differ < 0.001 * total


def test_only_scenes_gdal_reads_the_same_way_qualify(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.integers(1, 255, (3, 64, 64), dtype=np.uint8)
    plain = write_raster(tmp_path / "plain.tif", data)
    nodata = write_raster(tmp_path / "nodata.tif", data, nodata=0)  # GDAL's weights leave nodata out
    wide = write_raster(tmp_path / "u16.tif", data.astype(np.uint16))
    with rasterio.open(tmp_path / "ovr.tif", "w", **rasterio.open(plain).profile) as dst:
        dst.write(data)
        dst.build_overviews([2])  # GDAL may read a downsampled window from it
    with rasterio.open(plain) as p, rasterio.open(nodata) as n, rasterio.open(wide) as u:
        assert resamples_as_gdal(p, (1, 2, 3), 0.6) and resamples_as_gdal(p, (1, 2, 3), 1.5)
        assert not resamples_as_gdal(p, (1, 2, 3), 1.0)  # nothing to resample
        assert not resamples_as_gdal(n, (1, 2, 3), 0.6)
        assert not resamples_as_gdal(u, (1, 2, 3), 0.6)
    with rasterio.open(tmp_path / "ovr.tif") as o:
        assert not resamples_as_gdal(o, (1, 2, 3), 0.6) and resamples_as_gdal(o, (1, 2, 3), 1.5)


def test_the_predictor_takes_windows_already_on_its_device():
    """Resampled windows reach the model as a tensor: the same probabilities as the same pixels from the host,
    and a short batch of a compiled model is padded the same way."""
    from fpn_geo.model import ModelMeta, build_model
    from fpn_geo.predictor import SegmenterPredictor

    torch.manual_seed(0)
    meta = ModelMeta(depth=18, fpn_channels=64, head_channels=32, bands=(1, 2, 3))
    predictor = SegmenterPredictor(build_model(meta), meta, "cpu")
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    host = predictor(images, [None] * 3)
    device = predictor(torch.from_numpy(images), [None] * 3)
    assert torch.equal(host, device)
    predictor.compiled = True  # the padding path, without a real compile on CPU
    short = predictor(torch.from_numpy(images[:1]), [None])
    assert short.shape[0] == 1 and torch.equal(short, predictor(images[:1], [None]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_resamples_as_gdal_does(tmp_path):
    differ, total = compare(scene(tmp_path), 0.6, 96, 16, "cuda")
    assert differ < 0.001 * total


def test_the_pipeline_finds_the_same_buildings_resampling_on_the_device(tmp_path):
    """`resampling: device` (what CUDA runs by default) through the whole pipeline with the bundled model, here
    on the CPU: a scene at 0.20 m read for the model's 0.15 m gives the same buildings as GDAL's reads."""
    import geopandas as gpd
    from rasterio.transform import from_origin

    from fpn_geo.config import load_config
    from fpn_geo.pipeline import load_segmenter, segment
    from tests.doubles import KAMPALA_Z20, REPO

    with rasterio.open(KAMPALA_Z20) as src:
        data = src.read((1, 2, 3), window=rasterio.windows.Window(640, 384, 256, 256))
    path = write_raster(tmp_path / "z20_at_20cm.tif", data, transform=from_origin(500000, 40000, 0.2, 0.2))
    seg = load_segmenter(REPO / "models" / "default.safetensors", "cpu")
    runs = {}
    for where in ("cpu", "device"):
        cfg = load_config(window=256, overlap=32, probability="none", block_windows=2, resampling=where)
        runs[where] = segment(str(path), seg, tmp_path / f"{where}.gpkg", cfg)
    assert "resample" in runs["device"].times and "resample" not in runs["cpu"].times
    a, b = (gpd.read_file(runs[w].out, layer="buildings") for w in ("cpu", "device"))
    assert len(a) >= 2  # buildings in this crop: 3
    assert sorted(zip(a.geometry.to_wkt(), a.score)) == sorted(zip(b.geometry.to_wkt(), b.score))
