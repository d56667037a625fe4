"""The numpy tracer draws what GDAL's polygonize draws with 4-connectivity: GDAL is the reference here."""

import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.features import shapes
from scipy import ndimage

from fpn_geo.trace import trace_labels


def gdal_polygons(labels: np.ndarray, x0: int = 0, y0: int = 0) -> list[tuple[shapely.Polygon, int]]:
    found = shapes(labels, mask=labels > 0, connectivity=4, transform=Affine.translation(x0, y0))
    return [(shapely.geometry.shape(g), int(v)) for g, v in found]


def assert_same_as_gdal(labels: np.ndarray, x0: int = 0, y0: int = 0) -> int:
    """Every polygon matches one of GDAL's: same label, same rings (holes counted), same point set, both valid."""
    polygons, values = trace_labels(labels, x0, y0)
    expected = gdal_polygons(labels, x0, y0)
    assert len(polygons) == len(expected)
    left = list(range(len(expected)))
    for poly, value in zip(polygons, values.tolist()):
        assert poly.is_valid, poly.wkt
        for j in left:
            other, v = expected[j]
            if (v == value and len(other.interiors) == len(poly.interiors)
                    and poly.symmetric_difference(other).area == 0 and poly.area == other.area):
                left.remove(j)
                break
        else:
            raise AssertionError(f"label {value}: {poly.wkt} is not among GDAL's polygons")
    return len(polygons)


def test_random_label_rasters_match_gdal():
    rng = np.random.default_rng(7)
    traced = 0
    for case in range(200):
        h, w = rng.integers(1, 25, 2)
        labels = rng.integers(0, rng.integers(1, 6) + 1, (h, w)).astype(np.int32)
        if case % 3 == 0:  # bigger regions, longer straight runs
            labels = ndimage.zoom(labels, 3, order=0)
        traced += assert_same_as_gdal(labels, int(rng.integers(0, 500)), int(rng.integers(0, 500)))
    assert traced > 5000


SHAPES = [  # the hand-made cases GDAL draws its own way
    # diagonal pixels of one label are two polygons (4-connectivity)
    ["10", "01"],
    # a ring of one label around a hole that touches its outline at a corner: GDAL's hole ring, kept valid
    ["0111", "1011", "1111"],
    # two holes that touch at a corner
    ["1111", "1011", "1101", "1111"],
    # another label inside the hole; then two parts of one label, each with a hole (holes find their owner)
    ["11111", "12221", "12021", "12221", "11111"],
    ["111000111", "101000101", "111000111"],
    # a part of label 1 on an island inside a hole of label 1
    ["1111111", "1000001", "1010001", "1000001", "1111111"],
]


@pytest.mark.parametrize("rows", SHAPES)
def test_shapes_gdal_draws_its_own_way(rows):
    labels = np.array([[int(c) for c in r] for r in rows], dtype=np.int32)
    assert_same_as_gdal(labels, 3, 5)


def test_nothing_labelled_gives_no_polygons():
    polygons, values = trace_labels(np.zeros((4, 6), np.int32))
    assert len(polygons) == 0 and len(values) == 0


def test_polygons_come_in_raster_order_of_their_top_left_corner():
    labels = np.array([[0, 0, 2], [1, 0, 0], [0, 3, 0]], dtype=np.int32)
    polygons, values = trace_labels(labels)
    assert values.tolist() == [2, 1, 3]
    assert shapely.bounds(polygons).tolist()[0] == [2, 0, 3, 1]
