"""The SpaceNet building metric reproduces solaris' published values; pixel IoU on a real grid."""

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from shapely.affinity import translate
from shapely.geometry import box

from fpn_geo.errors import ConfigError, InputError
from fpn_geo.evaluate import areas_m2, building_f1, evaluate, pixel_iou

ROOT = Path(__file__).resolve().parents[1]
GT = ROOT / "tests/fixtures/metric/gt.geojson"
PRED = ROOT / "tests/fixtures/metric/pred.geojson"
KAMPALA_TIF = ROOT / "data/kampala_oam/mosaic_z21_12x8_3072x2048.tif"
KAMPALA_LABELS = ROOT / "data/kampala_oam/labels.geojson"


@pytest.fixture(scope="module")
def gt():
    return gpd.read_file(GT)


@pytest.fixture(scope="module")
def pred():
    return gpd.read_file(PRED)


def _rounded(scores):
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()}


def test_fixtures_are_utm_metres(gt, pred):
    assert gt.crs.to_epsg() == 32616 and pred.crs.to_epsg() == 32616


def test_solaris_published_values(gt, pred):
    # solaris Evaluator.eval_iou (no area filter) gives TP 8, FP 20, FN 20, F1 0.2857
    scores = _rounded(building_f1(pred, gt, iou=0.5, min_area_m2=0.0))
    assert scores == {"TP": 8, "FP": 20, "FN": 20, "precision": 0.2857, "recall": 0.2857, "f1": 0.2857}


def test_prediction_in_another_crs_is_reprojected(gt, pred):
    scores = building_f1(pred.to_crs("EPSG:4326"), gt)
    assert (scores["TP"], scores["FP"], scores["FN"]) == (8, 20, 20)


def test_identical_sets_score_one(gt):
    scores = building_f1(gt, gt)
    assert scores["f1"] == 1.0 and scores["TP"] == len(gt) == 28


def test_empty_prediction_scores_zero(gt, pred):
    scores = building_f1(pred.iloc[:0], gt)
    assert scores == {"TP": 0, "FP": 0, "FN": 28, "precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_matching_is_one_to_one(gt):
    twice = gpd.GeoDataFrame(geometry=list(gt.geometry[:3]) * 2, crs=gt.crs)
    scores = building_f1(twice, gt)
    assert (scores["TP"], scores["FP"], scores["FN"]) == (3, 3, 25)


def test_iou_threshold_is_respected():
    truth = gpd.GeoDataFrame(geometry=[box(0, 0, 10, 10)], crs="EPSG:32616")
    shifted = gpd.GeoDataFrame(geometry=[translate(box(0, 0, 10, 10), xoff=4)], crs="EPSG:32616")  # IoU 6/14
    assert building_f1(shifted, truth)["TP"] == 0
    assert building_f1(shifted, truth, iou=0.4)["TP"] == 1


def test_score_column_orders_predictions():
    truth = gpd.GeoDataFrame(geometry=[box(0, 0, 10, 10)], crs="EPSG:32616")
    good, poor = box(0, 0, 10, 10), box(0, 0, 10, 7)
    pred = gpd.GeoDataFrame({"score": [0.2, 0.9]}, geometry=[poor, good], crs="EPSG:32616")
    assert building_f1(pred, truth)["TP"] == 1  # the confident exact box takes the match
    pred = gpd.GeoDataFrame({"score": [0.9, 0.2]}, geometry=[poor, good], crs="EPSG:32616")
    assert building_f1(pred, truth)["TP"] == 1  # the poor box (IoU 0.7) takes it first


def test_area_filter_in_m2_is_crs_independent(gt, pred):
    utm = building_f1(pred, gt, min_area_m2=20)
    lonlat = building_f1(pred.to_crs("EPSG:4326"), gt.to_crs("EPSG:4326"), min_area_m2=20)
    assert utm == lonlat
    assert utm["FN"] + utm["TP"] == int((gt.area >= 20).sum()) < 28
    assert areas_m2(gt.to_crs("EPSG:3857")) == pytest.approx(gt.area.to_numpy(), rel=0.01)


def test_bad_arguments_are_clear_errors(gt, pred):
    with pytest.raises(ConfigError, match="iou=1.5"):
        building_f1(pred, gt, iou=1.5)
    with pytest.raises(InputError, match="Only one side has a CRS"):
        building_f1(pred.set_crs(None, allow_override=True), gt)


def test_pixel_iou():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    a[:2], b[1:3] = True, True
    assert pixel_iou(a, b) == pytest.approx(4 / 12)
    assert pixel_iou(a, a) == 1.0 and pixel_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    with pytest.raises(InputError, match="shape"):
        pixel_iou(a, b[:3])


def test_evaluate_fixture_report_is_json(tmp_path):
    report = evaluate(PRED, GT)
    json.dumps(report)
    assert report["building"]["TP"] == 8 and report["crs"] == "EPSG:32616"


def test_evaluate_on_kampala_grid(tmp_path):
    # prediction = labels moved 1 m east (EPSG:3857): pixel IoU on the mosaic grid must match
    # the IoU of the polygon unions clipped to the mosaic, computed without rasterizing
    with rasterio.open(KAMPALA_TIF) as src:
        grid = box(*src.bounds)
    truth = gpd.read_file(KAMPALA_LABELS).to_crs("EPSG:3857")
    moved = truth.copy()
    moved["geometry"] = truth.geometry.translate(xoff=1.0)
    pred_path = tmp_path / "moved.gpkg"
    moved.to_file(pred_path, engine="pyogrio")
    report = evaluate(pred_path, KAMPALA_LABELS, raster_path=KAMPALA_TIF)
    json.dumps(report)
    t = shapely.union_all(truth.geometry.make_valid().to_numpy()).intersection(grid)
    p = shapely.union_all(moved.geometry.make_valid().to_numpy()).intersection(grid)
    expected = t.intersection(p).area / t.union(p).area
    assert 0.3 < report["pixel_iou"] < 0.95
    assert report["pixel_iou"] == pytest.approx(expected, abs=0.01)
    assert report["n_truth"] == report["n_pred"] == 108
    assert 0 < report["building"]["f1"] < 1.0
