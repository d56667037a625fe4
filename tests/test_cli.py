"""The `fpn-geo` command line: `info` on scenes and checkpoints, and `segment`'s one-line summary."""

import json
import re

from fpn_geo.cli import main


def test_info_describes_a_scene(capsys):
    assert main(["info", "data/zanzibar/tanzania_sample.tif", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["crs"] == "EPSG:32737" and (info["width"], info["height"], info["count"]) == (1000, 1000, 3)
    assert abs(info["gsd_m"] - 0.0775) < 1e-3


def test_info_describes_a_checkpoint(checkpoint, capsys):
    assert main(["info", str(checkpoint), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "resnet18-fpn256-semantic128" and info["classes"] == [
        "background",
        "building",
        "contact",
    ]
    assert info["parameters"] > 1_000_000


def test_segment_prints_a_one_line_summary(small_scene, checkpoint, tmp_path, capsys):
    out = tmp_path / "deep" / "er" / "o.gpkg"  # missing folders are created
    args = ["segment", str(small_scene), "--model", str(checkpoint), "--out", str(out), "--window", "128",
            "--overlap", "32", "-q"]
    assert main(args) == 0
    line = capsys.readouterr().out.strip()
    summary = r"6 windows \(0 nodata\), \d+ buildings, [\d.]+ s, [\d.]+ Mpx/s, model r18, explicit -> .*o\.gpkg"
    assert re.fullmatch(summary, line), line
    assert out.exists() and out.with_name("o.probability.tif").exists()
