"""Bad input: a one-line error, a non-zero exit, and nothing left behind (nor anything good overwritten)."""

import logging
import subprocess
import sys

import numpy as np
import pyogrio
import pytest
import rasterio

from fpn_geo.cli import main
from tests.doubles import make_checkpoint, write_raster


def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, [line for line in err if not line.startswith("segment")]  # drop the progress bar


def assert_clean_failure(code, err, out_dir, match):
    assert code != 0
    assert len(err) == 1 and err[0].startswith("fpn-geo: error:"), err
    assert match in err[0], err
    leftovers = [p.name for p in out_dir.iterdir()]
    assert leftovers == [], f"left behind: {leftovers}"


@pytest.fixture
def out_dir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


def segment_args(scene, ckpt, out_dir):
    return ["segment", str(scene), "--model", str(ckpt), "--out", str(out_dir / "b.gpkg"), "-q"]


def test_truncated_tiff(small_scene, checkpoint, out_dir, capsys, tmp_path):
    data = small_scene.read_bytes()
    bad = tmp_path / "truncated.tif"
    bad.write_bytes(data[: len(data) // 2])
    assert_clean_failure(*run_cli(segment_args(bad, checkpoint, out_dir), capsys), out_dir, "corrupt or truncated")


def test_not_a_raster(checkpoint, out_dir, capsys, tmp_path):
    bad = tmp_path / "notes.tif"
    bad.write_text("these are not pixels\n" * 20)
    assert_clean_failure(*run_cli(segment_args(bad, checkpoint, out_dir), capsys), out_dir, "not a readable raster")


def test_empty_file(checkpoint, out_dir, capsys, tmp_path):
    bad = tmp_path / "empty.tif"
    bad.touch()
    assert_clean_failure(*run_cli(segment_args(bad, checkpoint, out_dir), capsys), out_dir, "empty")


def test_missing_file(checkpoint, out_dir, capsys, tmp_path):
    assert_clean_failure(
        *run_cli(segment_args(tmp_path / "nope.tif", checkpoint, out_dir), capsys), out_dir, "does not exist"
    )


def test_no_crs(checkpoint, out_dir, capsys, tmp_path):
    bad = write_raster(tmp_path / "nocrs.tif", np.ones((3, 64, 64), np.uint8), crs=None)
    assert_clean_failure(*run_cli(segment_args(bad, checkpoint, out_dir), capsys), out_dir, "has no CRS")


def test_no_geotransform(checkpoint, out_dir, capsys, tmp_path):
    bad = write_raster(tmp_path / "nogt.tif", np.ones((3, 64, 64), np.uint8), transform=False)
    assert_clean_failure(*run_cli(segment_args(bad, checkpoint, out_dir), capsys), out_dir, "no geotransform")


def test_wrong_band_count(checkpoint, out_dir, capsys, tmp_path):
    bad = write_raster(tmp_path / "pan.tif", np.ones((1, 64, 64), np.uint16))
    assert_clean_failure(
        *run_cli(segment_args(bad, checkpoint, out_dir), capsys),
        out_dir,
        "has 1 band(s) but the model reads bands [1, 2, 3]",
    )


def test_checkpoint_with_more_bands_than_the_scene(small_scene, out_dir, capsys, tmp_path):
    ckpt = make_checkpoint(tmp_path / "c4" / "four.safetensors", bands=4)
    assert_clean_failure(*run_cli(segment_args(small_scene, ckpt, out_dir), capsys), out_dir, "has 3 band(s)")


def test_mismatched_architecture(small_scene, out_dir, capsys, tmp_path):
    ckpt = make_checkpoint(tmp_path / "c" / "r18.safetensors")
    meta = ckpt.with_suffix(".json")
    meta.write_text(meta.read_text().replace('"depth": 18', '"depth": 50'))
    assert_clean_failure(
        *run_cli(segment_args(small_scene, ckpt, out_dir), capsys), out_dir, "does not match architecture resnet50"
    )


def test_output_folder_cannot_be_written(small_scene, checkpoint, out_dir, capsys):
    blocker = out_dir / "file"
    blocker.write_text("x")
    code, err = run_cli(
        ["segment", str(small_scene), "--model", str(checkpoint), "--out", str(blocker / "b.gpkg"), "-q"], capsys
    )
    assert code != 0 and len(err) == 1 and "is not a folder" in err[0], err
    assert [p.name for p in out_dir.iterdir()] == ["file"]


def test_wrong_config_key_and_type(small_scene, checkpoint, out_dir, capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("window: 512\nwindw: 3\n")
    assert_clean_failure(
        *run_cli(segment_args(small_scene, checkpoint, out_dir) + ["--config", str(cfg)], capsys),
        out_dir,
        "unknown key 'windw'",
    )
    assert_clean_failure(
        *run_cli(segment_args(small_scene, checkpoint, out_dir) + ["--window", "500"], capsys),
        out_dir,
        "multiple of 32",
    )


def test_failed_run_leaves_an_existing_good_output_untouched(small_scene, checkpoint, out_dir, capsys, tmp_path):
    assert main(segment_args(small_scene, checkpoint, out_dir)) == 0
    good = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    bad = tmp_path / "truncated.tif"
    bad.write_bytes(small_scene.read_bytes()[:1000])
    code, _ = run_cli(segment_args(bad, checkpoint, out_dir), capsys)
    assert code != 0
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == good


def test_all_nodata_gives_an_empty_valid_geopackage_and_a_warning(checkpoint, out_dir, tmp_path, caplog):
    scene = write_raster(tmp_path / "void.tif", np.zeros((3, 300, 200), np.uint8), nodata=0)
    with caplog.at_level(logging.WARNING, logger="fpn_geo"):
        assert main(segment_args(scene, checkpoint, out_dir)) == 0
    assert any("all nodata" in r.message for r in caplog.records)
    gpkg = out_dir / "b.gpkg"
    assert pyogrio.read_info(gpkg, layer="buildings")["features"] == 0
    assert pyogrio.read_info(gpkg, layer="buildings")["crs"] == "EPSG:32636"
    assert len(pyogrio.read_dataframe(gpkg, layer="provenance")) == 1
    with rasterio.open(out_dir / "b.probability.tif") as prob:
        assert prob.read().max() == 0


def test_console_script_exit_code_and_one_line(checkpoint, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fpn_geo.cli", "segment", str(tmp_path / "missing.tif"), "--model", str(checkpoint),
         "--out", str(tmp_path / "o.gpkg")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
