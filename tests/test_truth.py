"""Labels land on the scene at their true place, in the scene CRS, with contact where buildings touch."""

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import GeometryCollection, LineString, Polygon, box

from fpn_geo.errors import ConfigError, InputError
from fpn_geo.truth import (
    BUILDING,
    CONTACT,
    rasterize_classes,
    rasterize_instances,
    read_label_mask,
    read_labels,
    repair_polygons,
)

ROOT = Path(__file__).resolve().parents[1]
ZANZIBAR_TIF = ROOT / "data/zanzibar/tanzania_sample.tif"
ZANZIBAR_LABELS = ROOT / "data/zanzibar/tanzania_sample.geojson"
SPACENET_MASK = ROOT / "data/spacenet1_rio/masks/3band_013022223130_Public_img50.tif"


@pytest.fixture(scope="module")
def scene():
    with rasterio.open(ZANZIBAR_TIF) as src:
        return src.crs, src.transform, src.shape, box(*src.bounds)


@pytest.fixture(scope="module")
def zanzibar(scene):
    crs, _, _, _ = scene
    return read_labels(ZANZIBAR_LABELS, crs)


def test_zanzibar_crs_differ_and_labels_are_reprojected(scene, zanzibar):
    crs, _, _, _ = scene
    assert gpd.read_file(ZANZIBAR_LABELS).crs.to_epsg() == 4326
    assert crs.to_epsg() == 32737
    assert zanzibar.crs.to_epsg() == 32737


def test_zanzibar_invalid_geometries_repaired(zanzibar):
    assert zanzibar.attrs == {"repaired": 8, "dropped": 1, "features": len(gpd.read_file(ZANZIBAR_LABELS))}
    assert zanzibar.geometry.is_valid.all()
    assert (zanzibar.geom_type == "Polygon").all()
    assert not zanzibar.geometry.is_empty.any()


def test_zanzibar_buildings_rasterize_at_their_true_place(scene, zanzibar):
    _, transform, shape, crop = scene
    inside = zanzibar[zanzibar.intersects(crop)]
    assert len(inside) == 7
    clipped = inside.geometry.intersection(crop).to_numpy()
    ids = rasterize_instances(clipped, transform, shape)
    pixel_area = abs(transform.a * transform.e)
    counts = np.bincount(ids.ravel(), minlength=8)[1:]
    assert len(counts) == 7
    rows, cols = np.indices(shape)
    for i, poly in enumerate(clipped, start=1):
        expected = poly.area / pixel_area
        assert counts[i - 1] == pytest.approx(expected, rel=0.05), f"building {i}"
        mine = ids == i
        # pixel centre of the blob, then polygon centroid mapped into pixel coordinates
        blob_col, blob_row = cols[mine].mean() + 0.5, rows[mine].mean() + 0.5
        poly_col, poly_row = ~transform @ (poly.centroid.x, poly.centroid.y)
        assert abs(blob_col - poly_col) < 2 and abs(blob_row - poly_row) < 2, f"building {i}"


def test_ignoring_the_crs_puts_nothing_on_the_crop(scene):
    _, transform, shape, _ = scene
    raw = gpd.read_file(ZANZIBAR_LABELS)  # lon/lat degrees, never reprojected
    ids = rasterize_instances(raw.geometry, transform, shape)  # None/empty rows are skipped
    assert ids.max() == 0


def test_file_without_crs_is_a_clear_error(tmp_path):
    path = tmp_path / "nocrs.shp"  # a Shapefile without its .prj
    with pytest.warns(UserWarning, match="crs"):
        gpd.GeoDataFrame({"id": [1]}, geometry=[box(0, 0, 1, 1)], crs=None).to_file(path, engine="pyogrio")
    with pytest.raises(InputError, match="no CRS"):
        read_labels(path, "EPSG:32737")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_labels(tmp_path / "nope.geojson")


def test_bow_tie_is_repaired_and_counted(tmp_path):
    bow_tie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10), (0, 0)])
    assert not bow_tie.is_valid
    path = tmp_path / "bowtie.gpkg"
    gdf = gpd.GeoDataFrame({"id": [1, 2]}, geometry=[bow_tie, box(20, 0, 30, 10)], crs="EPSG:32737")
    gdf.to_file(path, engine="pyogrio")
    out = read_labels(path, "EPSG:32737")
    assert out.attrs == {"repaired": 1, "dropped": 0, "features": 2}
    assert out.geometry.is_valid.all() and (out.geom_type == "Polygon").all()
    assert len(out) == 3  # two triangles of the bow-tie, plus the square
    assert out.area.sum() == pytest.approx(50 + 100)


def test_non_polygonal_and_empty_geometries_are_dropped():
    gdf = gpd.GeoDataFrame(
        geometry=[box(0, 0, 1, 1), LineString([(0, 0), (1, 1)]), GeometryCollection(), None], crs="EPSG:32737"
    )
    out, report = repair_polygons(gdf)
    assert len(out) == 1 and report.dropped == 3


def _squares_grid():
    transform = from_origin(0, 40, 1, 1)  # 1 m pixels, rows 0-39 are y 40..0
    a, b = box(5, 10, 15, 20), box(15, 10, 25, 20)  # share the edge x = 15
    far = box(30, 30, 36, 36)
    return transform, (40, 40), [a, b, far]


def test_contact_only_between_touching_buildings():
    transform, shape, geoms = _squares_grid()
    classes = rasterize_classes(geoms, transform, shape, contact_px=2)
    contact_rows, contact_cols = np.nonzero(classes == CONTACT)
    # squares cover cols 5-14 and 15-24, rows 20-29; contact is within 2 px of both
    assert set(contact_cols.tolist()) == {13, 14, 15, 16}
    assert set(contact_rows.tolist()) == set(range(18, 32))
    assert len(contact_cols) == 4 * 14
    assert (classes[4:10, 30:36] == BUILDING).all()  # the lone square: building, no contact
    assert (classes[20:30, 5:13] == BUILDING).all() and (classes[20:30, 17:25] == BUILDING).all()
    assert classes.dtype == np.uint8 and set(np.unique(classes).tolist()) == {0, 1, 2}


def test_contact_for_near_but_not_far_buildings():
    transform = from_origin(0, 40, 1, 1)
    near = rasterize_classes([box(5, 10, 15, 20), box(17, 10, 27, 20)], transform, (40, 40), contact_px=2)
    far = rasterize_classes([box(5, 10, 15, 20), box(22, 10, 32, 20)], transform, (40, 40), contact_px=2)
    assert (near == CONTACT).any()
    assert not (far == CONTACT).any()


def test_contact_px_must_be_a_non_negative_int():
    transform, shape, geoms = _squares_grid()
    with pytest.raises(ConfigError, match="contact_px=-1"):
        rasterize_classes(geoms, transform, shape, contact_px=-1)
    assert not (rasterize_classes(geoms, transform, shape, contact_px=0) == CONTACT).any()


def test_empty_labels_give_background():
    out = rasterize_classes([], from_origin(0, 10, 1, 1), (10, 10))
    assert out.shape == (10, 10) and out.max() == 0


def test_mask_raster_labels_match_vector_labels():
    mask, transform, crs = read_label_mask(SPACENET_MASK)
    assert crs.to_epsg() == 4326 and set(np.unique(mask).tolist()) == {0, 1}
    vectors = read_labels(
        SPACENET_MASK.parents[1] / "labels_vectorized_from_masks" / (SPACENET_MASK.stem + "_vectorized.geojson"), crs
    )
    burnt = rasterize_instances(vectors, transform, mask.shape) > 0
    agree = np.count_nonzero(burnt & (mask > 0)) / max(1, np.count_nonzero(burnt | (mask > 0)))
    assert agree > 0.95
