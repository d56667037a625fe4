"""The segment pipeline on real and synthetic scenes: nodata, GSD resampling, band counts, determinism."""

import math

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from fpn_geo.config import load_config
from fpn_geo.model.meta import ModelMeta
from fpn_geo.pipeline import Segmenter, load_segmenter, segment
from fpn_geo.scene import open_scene
from tests.doubles import KAMPALA_Z20, make_checkpoint, write_raster


class BrightPredictor:
    """A pixelwise "model": building where band 1 is bright. Its truth is known at every scale."""

    def __init__(self, level: int = 128) -> None:
        self.level = level
        self.seen: list[tuple[int, ...]] = []

    def __call__(self, images, windows):
        self.seen.append(images.shape)
        return np.where(images[:, :1] > self.level, 255, 0).astype(np.uint8)


def footprint_only(predictor, gsd_m: float | None = None) -> Segmenter:
    return Segmenter(predictor, ModelMeta(classes=("background", "building"), gsd_m=gsd_m))


def test_nodata_is_never_building_and_empty_windows_are_skipped(tmp_path):
    data = np.full((3, 700, 900), 200, np.uint8)
    data[:, :, :600] = 0  # left two thirds: nodata
    scene = write_raster(tmp_path / "half.tif", data, nodata=0)
    pred = BrightPredictor(level=-1)  # says "building" everywhere it is asked
    summary = segment(str(scene), footprint_only(pred), tmp_path / "o.gpkg", load_config(window=256, overlap=32))
    assert summary.windows_skipped >= 4  # windows entirely in the nodata part never reach the model
    assert sum(s[0] for s in pred.seen) == summary.windows - summary.windows_skipped
    with rasterio.open(summary.probability) as prob:
        p = prob.read(1)
    assert p[:, :600].max() == 0 and p[:, 600:].min() == 255
    gdf = gpd.read_file(tmp_path / "o.gpkg", layer="buildings")
    assert len(gdf) == 1
    x_nodata_edge = 500000 + 600 * 0.3
    assert gdf.total_bounds[0] == pytest.approx(x_nodata_edge)


def test_internal_mask_counts_as_nodata(tmp_path):
    path = tmp_path / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", driver="GTiff", width=300, height=300, count=3, dtype="uint8",
                           crs="EPSG:32636", transform=from_origin(500000, 40000, 0.3, 0.3)) as dst:
            dst.write(np.full((3, 300, 300), 250, np.uint8))
            mask = np.zeros((300, 300), np.uint8)
            mask[100:200, 100:200] = 255
            dst.write_mask(mask)
    summary = segment(
        str(path), footprint_only(BrightPredictor()), tmp_path / "o.gpkg", load_config(window=128, overlap=32)
    )
    with rasterio.open(summary.probability) as prob:
        p = prob.read(1)
    assert (p > 0).sum() == 100 * 100 and p[100:200, 100:200].min() == 255


def _kampala_crop(tmp_path):
    with rasterio.open(KAMPALA_Z20) as src:  # 15 cm
        window = rasterio.windows.Window(0, 0, 700, 500)
        data, transform, crs = src.read(window=window), src.window_transform(window), src.crs
    return write_raster(tmp_path / "k.tif", data, crs=crs, transform=transform), data, transform


def test_windows_are_resampled_to_the_model_gsd_and_the_cog_is_on_the_model_grid(tmp_path):
    scene, data, transform = _kampala_crop(tmp_path)
    pred = BrightPredictor()
    seg = footprint_only(pred, gsd_m=0.075)  # the model wants 7.5 cm: the model grid is the scene upsampled 2x
    summary = segment(str(scene), seg, tmp_path / "o.gpkg", load_config(window=256, overlap=32))
    assert {s[-1] for s in pred.seen} == {256}  # the model always sees 256 model px, 32-aligned
    scale = open_scene(str(scene)).gsd_m / 0.075  # about 2: 15 cm Mercator pixels are 14.9 cm on the ground
    with rasterio.open(summary.probability) as prob:
        assert prob.shape == (math.ceil(500 * scale), math.ceil(700 * scale))
        assert prob.transform.almost_equals(transform * rasterio.Affine.scale(1 / scale))
        assert prob.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and prob.overviews(1)
        p = prob.read(1, out_shape=(500, 700), resampling=rasterio.enums.Resampling.bilinear) > 127
    agree = (p == (data[0] > 128)).mean()
    assert agree > 0.95, agree  # only resampling blur at bright/dark edges may differ


def test_the_native_option_puts_the_cog_on_the_scene_grid(tmp_path):
    scene, data, transform = _kampala_crop(tmp_path)
    cfg = load_config(window=256, overlap=32, probability_grid="native")
    summary = segment(str(scene), footprint_only(BrightPredictor(), gsd_m=0.3), tmp_path / "o.gpkg", cfg)
    with rasterio.open(summary.probability) as prob:  # the model grid is the scene downsampled 2x
        assert prob.transform == transform and prob.shape == (500, 700)
        assert prob.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        p = prob.read(1) > 127
    agree = (p == (data[0] > 128)).mean()
    assert agree > 0.9, agree


def test_uint16_single_band_scene_with_a_one_band_model(tmp_path):
    """uint16 needs a declared rule for an 8-bit model (see tests/test_hostile_dtypes.py); with one it runs."""
    rng = np.random.default_rng(0)
    scene = write_raster(tmp_path / "pan.tif", rng.integers(0, 2000, (1, 200, 260), dtype=np.uint16), nodata=0)
    ckpt = make_checkpoint(tmp_path / "c" / "pan.safetensors", bands=1)
    cfg = load_config(window=128, overlap=32, radiometry={"rule": "percentile"})
    summary = segment(str(scene), load_segmenter(ckpt, "cpu"), tmp_path / "pan.gpkg", cfg)
    assert summary.windows == 6
    assert pyogrio.read_info(tmp_path / "pan.gpkg", layer="buildings")["crs"] == "EPSG:32636"


def test_same_inputs_give_the_same_polygons_and_ids(small_scene, checkpoint, tmp_path):
    cfg = load_config(window=128, overlap=32, threshold=0.45, min_area_m2=0.1)
    seg = load_segmenter(checkpoint, "cpu")
    a = segment(str(small_scene), seg, tmp_path / "a.gpkg", cfg)
    b = segment(str(small_scene), seg, tmp_path / "b.gpkg", cfg)
    ga, gb = (gpd.read_file(s.out, layer="buildings") for s in (a, b))
    assert a.run_id != b.run_id and len(ga) == len(gb) > 0
    assert (ga["id"] == gb["id"]).all()
    assert all(shapely.equals_exact(x, y, 1e-9) for x, y in zip(ga.geometry, gb.geometry))


def test_parallel_readers_give_the_same_batches_in_the_same_order():
    """Several reader threads (the GPU default) must hand the model exactly what one reader does."""
    from fpn_geo.inference import read_batches
    from fpn_geo.tiling import make_grid
    from fpn_geo.timing import StageTimes

    with rasterio.open(KAMPALA_Z20) as src:
        grid = make_grid(src.height, src.width, 256, 32)
    one = list(read_batches(str(KAMPALA_Z20), grid, (1, 2, 3), 256, 1.0, 3, StageTimes(), readers=1))
    times = StageTimes()
    many = list(read_batches(str(KAMPALA_Z20), grid, (1, 2, 3), 256, 1.0, 3, times, readers=4))
    assert len(one) == len(many) == -(-len(grid) // 3)
    for (g1, d1), (g2, d2) in zip(one, many):
        assert g1 == g2
        assert [d.window for d in d1] == [d.window for d in d2]
        assert all(np.array_equal(a.image, b.image) for a, b in zip(d1, d2))
    assert times["read"] > 0


def test_a_block_result_knows_its_own_wire_size_and_the_writer_adds_them_up(tmp_path):
    """The bytes a flow receives are counted on the worker, where the result is made; the writer only sums."""
    import pickle

    from fpn_geo.pipeline import SceneWriter, plan_scene, process_blocks

    seg = footprint_only(BrightPredictor())
    plan = plan_scene(str(KAMPALA_Z20), seg.meta, load_config(window=256, overlap=32, block_windows=1))
    results = list(process_blocks(plan, plan.blocks, seg))
    assert len(results) > 4
    for r in results:
        assert abs(r.wire_bytes - len(pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL))) <= 8
    with SceneWriter(plan, tmp_path / "o.gpkg") as writer:
        for r in reversed(results):
            writer.add(r)
        assert writer.bytes_received == sum(r.wire_bytes for r in results)


def test_blocks_finished_in_processes_give_what_threads_give(tmp_path):
    """post_workers: processes (GPU hosts with many cores) spawns children that finish blocks; same file."""
    seg = footprint_only(BrightPredictor())
    runs = {}
    for kind in ("threads", "processes"):
        cfg = load_config(window=256, overlap=32, block_windows=1, post_threads=2, post_workers=kind, min_area_m2=0.5)
        out = segment(str(KAMPALA_Z20), seg, tmp_path / f"{kind}.gpkg", cfg).out
        runs[kind] = gpd.read_file(out, layer="buildings")
    a, b = runs["threads"], runs["processes"]
    assert len(a) == len(b) > 10
    assert all(shapely.equals_exact(x, y, 1e-9) for x, y in zip(a.geometry, b.geometry))
    assert (a["score"] == b["score"]).all()


def test_a_daemonic_process_finishes_blocks_in_threads(monkeypatch, caplog):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    from fpn_geo.device import post_pool

    with post_pool("processes", 1) as pool:
        assert isinstance(pool, ProcessPoolExecutor)
    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True)
    with post_pool("processes", 1) as pool:
        assert isinstance(pool, ThreadPoolExecutor)
    assert "daemonic" in caplog.text


def test_the_geopackage_writer_holds_buildings_and_writes_them_in_few_batches(tmp_path):
    """Each write opens the file (about 10 ms): buildings wait until flush_at of them are there; ids stay in order."""
    from fpn_geo.geopackage import GeoPackageWriter

    def frame(n, x0):
        geoms = [shapely.box(x0 + i, 0, x0 + i + 0.5, 0.5) for i in range(n)]
        return gpd.GeoDataFrame({"score": np.ones(n, np.float32), "area_m2": np.ones(n, np.float32)},
                                geometry=geoms, crs="EPSG:32636")

    with GeoPackageWriter(tmp_path / "o.gpkg", "EPSG:32636", flush_at=10) as w:
        for k in range(5):
            w.append(frame(5, 10 * k))
            w.append(frame(0, 0))
        assert len(pyogrio.read_dataframe(w.tmp, layer="buildings")) == 20  # two writes so far, 5 held
        w.commit({"run_id": "t"})
    out = pyogrio.read_dataframe(tmp_path / "o.gpkg", layer="buildings")
    assert list(out["id"]) == list(range(25)) and out.geometry.bounds["minx"].is_monotonic_increasing
    with GeoPackageWriter(tmp_path / "empty.gpkg", "EPSG:32636") as w:
        w.commit({"run_id": "e"})
    empty = pyogrio.read_info(tmp_path / "empty.gpkg", layer="buildings")
    assert empty["features"] == 0 and "id" in list(empty["fields"])
