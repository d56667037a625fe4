"""The geo rules both inference and training use (`fpn_geo/georef.py`)."""

from __future__ import annotations

import pytest
from affine import Affine

from fpn_geo.georef import bounds_utm, is_local, local_utm, model_scale, pixel_size_m, scaled_shape, utm_at


def test_model_scale_snaps_to_the_scene_grid_within_5_percent():
    assert model_scale(0.149, 0.15) == 1.0
    assert model_scale(0.15, 0.30) == 0.5
    assert model_scale(0.30, None) == 1.0 and model_scale(0.15, 0.30, match_gsd=False) == 1.0
    assert scaled_shape(1024, 1536, 1.0) == (1024, 1536)
    assert scaled_shape(1001, 3, 0.5) == (501, 2)  # covers the whole scene


def test_local_utm_and_pixel_size_in_any_crs():
    assert utm_at("EPSG:4326", 32.58, 0.31).to_epsg() == 32636  # Kampala, north of the equator
    assert utm_at("EPSG:4326", 39.2, -6.16).to_epsg() == 32737  # Zanzibar, south
    assert bounds_utm("EPSG:4326", (32.5, 0.3, 32.6, 0.4)).to_epsg() == 32636
    t = Affine(0.3, 0, 450000, 0, -0.3, 35000)
    assert local_utm(t, "EPSG:32636", 100, 100).to_epsg() == 32636
    assert pixel_size_m(t, "EPSG:32636", 100, 100) == pytest.approx(0.3, rel=1e-3)


@pytest.mark.parametrize("path, local", [("data/x.tif", True), ("/vsis3/b/x.tif", False), ("s3://b/x.tif", False)])
def test_is_local(path, local):
    assert is_local(path) is local
