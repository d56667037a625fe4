"""`fpn-geo evaluate` on hostile truth files: what was repaired, split or dropped on the way in is said on one line
of stderr, and a truth file without a single building polygon is refused instead of scored as F1 0 with nothing
to find."""

from __future__ import annotations

import geopandas as gpd
import pytest
from shapely.geometry import LineString, Point, Polygon, box

from tests.hostile import assert_one_line_failure, run_subprocess


def bow_tie(x: float) -> Polygon:
    """A self-intersecting square: a building drawn with two corners swapped."""
    return Polygon([(x, 0), (x + 10, 10), (x + 10, 0), (x, 10), (x, 0)])


def write(path, geoms) -> str:
    gpd.GeoDataFrame({"id": list(range(len(geoms)))}, geometry=geoms, crs="EPSG:32737").to_file(path)
    return str(path)


@pytest.fixture
def pred(tmp_path) -> str:
    return write(tmp_path / "pred.gpkg", [box(40, 0, 50, 10), box(100, 0, 110, 10)])


def test_self_intersecting_truth_is_repaired_and_said_on_one_line(tmp_path, pred):
    truth = write(tmp_path / "truth.geojson", [bow_tie(0), bow_tie(20), box(40, 0, 50, 10)])
    code, err, out = run_subprocess(["evaluate", pred, "--truth", truth])
    assert code == 0, err
    assert len(err) == 1, err
    assert "truth.geojson: 3 features scored as 5 buildings" in err[0]
    assert "2 invalid" in err[0] and "0 dropped" in err[0] and "2 more from features split" in err[0]
    assert "TP 1, FP 1, FN 4" in out  # the counts the line announced


def test_a_clean_truth_file_says_nothing(tmp_path, pred):
    truth = write(tmp_path / "truth.geojson", [box(40, 0, 50, 10), box(60, 0, 70, 10)])
    code, err, out = run_subprocess(["evaluate", pred, "--truth", truth])
    assert code == 0 and err == [] and "TP 1, FP 1, FN 1" in out


@pytest.mark.parametrize(
    "geoms,word",
    [([Point(0, 0), Point(5, 5)], "2 features, none of them a polygon"),
     ([LineString([(0, 0), (10, 0)])], "1 feature, none"),
     ([Polygon([(0, 0), (10, 0), (20, 0), (0, 0)])], "1 feature, none")],  # a polygon with no area
    ids=["points", "lines", "zero-area"],
)
def test_truth_without_polygons_is_refused(tmp_path, pred, geoms, word):
    truth = write(tmp_path / "truth.geojson", geoms)
    code, err, _ = run_subprocess(["evaluate", pred, "--truth", truth, "--out", str(tmp_path / "r.json")])
    assert_one_line_failure(code, err, "no building polygons", word)
    assert not (tmp_path / "r.json").exists()
