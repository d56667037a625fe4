"""`fpn-geo evaluate`: the solaris fixture through the command line, a JSON report on disk, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

from fpn_geo.cli import main
from tests.doubles import KAMPALA_LABELS, KAMPALA_Z20

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "metric"


def test_evaluate_writes_the_solaris_report(tmp_path, capsys):
    out = tmp_path / "reports" / "report.json"
    assert (
        main(["evaluate", str(FIXTURES / "pred.geojson"), "--truth", str(FIXTURES / "gt.geojson"), "--out", str(out)])
        == 0
    )
    report = json.loads(out.read_text())
    b = report["building"]
    assert (b["TP"], b["FP"], b["FN"]) == (8, 20, 20)
    assert round(b["f1"], 4) == 0.2857
    assert report["iou_threshold"] == 0.5 and report["n_pred"] == 28
    assert "F1 0.2857" in capsys.readouterr().out
    assert not list(out.parent.glob("*.tmp"))


def test_evaluate_with_a_raster_adds_pixel_iou(tmp_path):
    out = tmp_path / "self.json"
    # the truth against itself, on the Kampala grid (labels in EPSG:4326, raster in EPSG:3857)
    args = ["evaluate", str(KAMPALA_LABELS), "--truth", str(KAMPALA_LABELS), "--raster", str(KAMPALA_Z20),
            "--out", str(out), "--min-area", "4"]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["pixel_iou"] == 1.0 and report["building"]["f1"] == 1.0
    assert report["min_area_m2"] == 4.0 and report["building"]["TP"] < report["n_truth"]  # the area filter applied


def test_evaluate_errors_are_one_line(tmp_path, capsys):
    code = main(["evaluate", str(tmp_path / "missing.gpkg"), "--truth", str(FIXTURES / "gt.geojson")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("fpn-geo: error:") and "missing.gpkg" in err
    code = main(["evaluate", str(FIXTURES / "pred.geojson"), "--truth", str(FIXTURES / "gt.geojson"), "--iou", "0"])
    assert code == 2 and "iou=0.0" in capsys.readouterr().err


def test_evaluate_flow_logic_without_a_server(tmp_path):
    """The flow's tasks are thin wrappers: their functions give the CLI's numbers (`.fn`, no Prefect server)."""
    from flows.train import evaluate_task, train_segmenter, write_report

    report = evaluate_task.fn(str(FIXTURES / "pred.geojson"), str(FIXTURES / "gt.geojson"), None, 0.5, 0.0)
    assert report["building"]["TP"] == 8
    path = write_report.fn(report, str(tmp_path / "r.json"))
    assert json.loads(Path(path).read_text())["building"]["FN"] == 20
    assert train_segmenter.name == "train-segmenter"
    assert set(train_segmenter.parameters.properties) == {"config", "out_dir", "resume", "epochs"}


def test_a_geopackage_with_several_layers_is_read_from_the_right_one(tmp_path, capsys):
    """Our GeoPackages hold buildings and provenance; other files may hold roads beside buildings."""
    import geopandas as gpd
    import pyogrio
    import pytest

    from fpn_geo.errors import InputError
    from fpn_geo.truth import read_labels

    gt = gpd.read_file(FIXTURES / "gt.geojson")
    roads = gpd.GeoDataFrame({"id": [1]}, geometry=gt.geometry.iloc[:1].boundary, crs=gt.crs)
    ours = tmp_path / "ours.gpkg"
    pyogrio.write_dataframe(roads, ours, layer="provenance_like")
    pyogrio.write_dataframe(gt, ours, layer="buildings")
    assert len(read_labels(ours)) == len(gt)  # 'buildings' is chosen, silently
    other = tmp_path / "other.gpkg"
    pyogrio.write_dataframe(roads, other, layer="roads")
    pyogrio.write_dataframe(gt, other, layer="houses")
    assert len(read_labels(other)) == len(gt)  # the only polygon layer
    pyogrio.write_dataframe(gt, other, layer="sheds")
    with pytest.raises(InputError, match="3 layers .*--truth-layer"):
        read_labels(other)
    assert main(["evaluate", str(FIXTURES / "pred.geojson"), "--truth", str(other), "--truth-layer", "houses"]) == 0
    assert main(["evaluate", str(FIXTURES / "pred.geojson"), "--truth", str(other), "--truth-layer", "nope"]) == 2
    assert "no layer 'nope'" in capsys.readouterr().err
