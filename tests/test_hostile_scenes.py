"""Hostile scenes beyond tests/test_bad_input.py: a VRT whose source is missing says so; a scene in EPSG:4326 runs
without geopandas' "area likely incorrect" warnings (areas are measured in the local UTM zone)."""

from __future__ import annotations

import rasterio
from rasterio.transform import from_origin

from tests.doubles import write_raster
from tests.hostile import assert_one_line_failure, run_inprocess, run_subprocess


def test_vrt_with_a_missing_source_names_the_missing_file(tmp_path, checkpoint, capsys):
    vrt = tmp_path / "s.vrt"
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="1">gone.tif'
        f"</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>" for b in (1, 2, 3)
    )
    vrt.write_text(f'<VRTDataset rasterXSize="300" rasterYSize="200"><SRS>EPSG:32636</SRS>'
                   f"<GeoTransform>500000,0.3,0,40000,0,-0.3</GeoTransform>{bands}</VRTDataset>")
    code, err = run_inprocess(
        ["segment", str(vrt), "--model", str(checkpoint), "--out", str(tmp_path / "b.gpkg"), "-q"], capsys
    )
    assert_one_line_failure(code, err, "gone.tif", "No such file")


def test_epsg_4326_scene_runs_without_area_warnings(tmp_path, checkpoint, small_scene):
    with rasterio.open(small_scene) as src:
        data = src.read()
    deg = 0.3 / 111_320
    scene = write_raster(tmp_path / "geo.tif", data, crs="EPSG:4326", transform=from_origin(32.58, 0.35, deg, deg))
    code, err, _ = run_subprocess(
        ["segment", str(scene), "--model", str(checkpoint), "--out", str(tmp_path / "b.gpkg"), "-q"]
    )
    assert code == 0, err
    noisy = [line for line in err if "area" in line.lower() or "warning" in line.lower()]
    assert noisy == [], err
