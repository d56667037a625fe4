"""Imagery of every dtype: fed as it is only when it fits the model's input range, otherwise mapped by the declared
radiometry rule, or refused on one line that says how to map it. Never read silently as if it were 8-bit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio

from fpn_geo.radiometry import RadiometryConfig, resolve_radiometry
from fpn_geo.reading import read_window
from fpn_geo.tiling import make_grid
from tests.doubles import write_raster
from tests.hostile import assert_one_line_failure, digest, run_inprocess, temps

AUTO_REFUSED = ["uint16", "int8", "int16", "uint32", "int32", "float32", "float64"]


@pytest.fixture
def base(small_scene):
    with rasterio.open(small_scene) as src:
        return src.read(), src.crs, src.transform


def as_dtype(base, tmp_path, dtype, convert):
    data, crs, transform = base
    return write_raster(tmp_path / f"scene_{dtype}.tif", convert(data).astype(dtype), crs=crs, transform=transform)


CONVERT = {
    "uint8": lambda d: d,
    "uint16": lambda d: d.astype(np.uint32) * 257,
    "int8": lambda d: d.astype(np.int16) - 128,
    "int16": lambda d: d.astype(np.int16) * 64,
    "uint32": lambda d: d.astype(np.uint32) * 1000,
    "int32": lambda d: d.astype(np.int32) * 1000,
    "float32": lambda d: d / 255.0,
    "float64": lambda d: d / 255.0,
}


@pytest.mark.parametrize("dtype", AUTO_REFUSED)
def test_auto_refuses_what_does_not_fit_and_says_how_to_map_it(base, tmp_path, checkpoint, capsys, dtype):
    scene = as_dtype(base, tmp_path, dtype, CONVERT[dtype])
    before = digest([scene])
    out_dir = tmp_path / "out"
    code, err = run_inprocess(
        ["segment", str(scene), "--model", str(checkpoint), "--out", str(out_dir / "b.gpkg"), "-q"], capsys
    )
    assert_one_line_failure(code, err, dtype, "radiometry", "rule")
    assert digest([scene]) == before and temps(out_dir) == [] and not (out_dir / "b.gpkg").exists()


def test_uint8_runs_as_it_is(base, tmp_path, checkpoint, capsys):
    scene = as_dtype(base, tmp_path, "uint8", CONVERT["uint8"])
    code, err = run_inprocess(
        ["segment", str(scene), "--model", str(checkpoint), "--out", str(tmp_path / "b.gpkg"), "-q"], capsys
    )
    assert code == 0, err


def test_complex_pixels_are_refused(base, tmp_path, checkpoint, capsys):
    data, crs, transform = base
    scene = write_raster(tmp_path / "c.tif", data.astype(np.complex64), crs=crs, transform=transform)
    code, err = run_inprocess(
        ["segment", str(scene), "--model", str(checkpoint), "--out", str(tmp_path / "b.gpkg"), "-q"], capsys
    )
    assert_one_line_failure(code, err, "complex64")


MAPPED = [
    ("uint16", {"rule": "linear", "scale": 1 / 257}),
    ("int8", {"rule": "linear", "offset": 128}),
    ("float32", {"rule": "linear", "scale": 255}),
    ("float64", {"rule": "linear", "scale": 255}),
]


@pytest.mark.parametrize("dtype,rule", MAPPED, ids=[m[0] for m in MAPPED])
def test_mapped_values_equal_the_8_bit_scene(base, tmp_path, dtype, rule):
    """Every window of the mapped scene reads as the 8-bit scene does (to float rounding)."""
    ref = as_dtype(base, tmp_path, "uint8", CONVERT["uint8"])
    scene = as_dtype(base, tmp_path, dtype, CONVERT[dtype])
    with rasterio.open(scene) as src, rasterio.open(ref) as rsrc:
        mapping = resolve_radiometry(src, (1, 2, 3), (0.0, 255.0), RadiometryConfig(**rule))
        for w in make_grid(src.height, src.width, 128, 32):
            got = read_window(src, w, (1, 2, 3), 128, radiometry=mapping).image
            want = read_window(rsrc, w, (1, 2, 3), 128).image
            assert np.abs(got - want.astype(np.float32)).max() < 1e-3


def test_percentile_stretch_maps_the_scene_into_the_model_range(base, tmp_path):
    scene = as_dtype(base, tmp_path, "uint16", lambda d: d.astype(np.uint32) * 40 + 1000)
    with rasterio.open(scene) as src:
        mapping = resolve_radiometry(src, (1, 2, 3), (0.0, 255.0), RadiometryConfig(rule="percentile"))
        image = read_window(
            src, next(iter(make_grid(src.height, src.width, 128, 32))), (1, 2, 3), 128, radiometry=mapping
        ).image
    assert image.dtype == np.float32 and image.min() >= 0 and image.max() <= 255 and image.std() > 10


@pytest.mark.parametrize("dtype,rule", MAPPED[:2], ids=[m[0] for m in MAPPED[:2]])
def test_end_to_end_mapped_scene_gives_the_8_bit_result(base, tmp_path, checkpoint, capsys, monkeypatch, dtype, rule):
    """Through the CLI: the plan resolves the mapping and every window read applies it."""
    ref = as_dtype(base, tmp_path, "uint8", CONVERT["uint8"])
    scene = as_dtype(base, tmp_path, dtype, CONVERT[dtype])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("radiometry: " + str(rule).replace("'", "") + "\n")
    assert (
        run_inprocess(
            ["segment", str(ref), "--model", str(checkpoint), "--out", str(tmp_path / "ref.gpkg"), "-q"], capsys
        )[0]
        == 0
    )
    code, err = run_inprocess(
        ["segment", str(scene), "--model", str(checkpoint), "--out", str(tmp_path / "m.gpkg"), "--config", str(cfg),
         "-q"], capsys
    )
    assert code == 0, err
    with rasterio.open(tmp_path / "ref.probability.tif") as a, rasterio.open(tmp_path / "m.probability.tif") as b:
        assert np.abs(a.read().astype(int) - b.read().astype(int)).max() <= 1


def test_a_reader_without_a_mapping_refuses_real_pixels(base, tmp_path):
    """A caller of read_window that passes no mapping: float scenes fail, never run unscaled."""
    from fpn_geo.errors import InputError

    scene = as_dtype(base, tmp_path, "float32", CONVERT["float32"])
    with rasterio.open(scene) as src, pytest.raises(InputError, match="radiometry"):
        read_window(src, next(iter(make_grid(src.height, src.width, 128, 32))), (1, 2, 3), 128)


# (scene dtype, rule, words of the one line): rules under which no value the scene can hold lands inside the
# model's range, so every pixel is clipped to its ends (0 buildings, said nowhere), or that overflow float32
BLANKING = [
    ("uint16", {"rule": "linear", "scale": -0.00389}, ["none inside", "(0 to 65535) to -254.931 to 0"]),
    ("uint16", {"rule": "linear", "offset": 1000}, ["none inside", "1000 to"]),
    ("uint8", {"rule": "linear", "scale": 1e308}, ["scale", "float32"]),
    ("float32", {"rule": "linear", "offset": -1e39}, ["offset", "float32"]),
]


@pytest.mark.parametrize("dtype,rule,words", BLANKING, ids=[f"{b[0]}-{list(b[1].items())[-1]}" for b in BLANKING])
def test_a_linear_rule_that_blanks_every_pixel_is_refused(base, tmp_path, checkpoint, capsys, dtype, rule, words):
    scene = as_dtype(base, tmp_path, dtype, CONVERT[dtype])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("radiometry: " + str(rule).replace("'", "") + "\n")
    out_dir = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # not one numpy warning on the way
        code, err = run_inprocess(
            ["segment", str(scene), "--model", str(checkpoint), "--out", str(out_dir / "b.gpkg"), "--config", str(cfg),
             "-q"], capsys
        )
    assert_one_line_failure(code, err, *words)
    assert not out_dir.exists()


def test_values_inside_counts_what_a_rule_keeps():
    from fpn_geo.radiometry import values_inside

    assert values_inside("uint16", 255 / 65535, 0, (0.0, 255.0)) == 65534  # 0 and 65535 land on the ends
    assert values_inside("int8", 1, 128, (0.0, 255.0)) == 254
    assert values_inside("uint16", -0.00389, 0, (0.0, 255.0)) == 0
    assert values_inside("uint8", 1e30, 0, (0.0, 255.0)) == 0
    assert values_inside("float32", 1e30, 0, (0.0, 255.0)) is None  # real values: not known from the dtype


def test_real_pixels_past_float32_are_clipped_without_warnings():
    from fpn_geo.radiometry import Radiometry

    image = np.array([[[1e38, -1e38, 0.5, np.nan]]], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = Radiometry((1e10,), (0.0,), (0.0, 255.0)).apply(image)
    assert out.tolist() == [[[255.0, 0.0, 255.0, 0.0]]]
