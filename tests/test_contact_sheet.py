"""The contact sheet shows each held-out block with the predicted outlines over the truth's."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
from PIL import Image

from fpn_geo.train.contact_sheet import PREDICTED, TRUTH, Panel, render_contact_sheet
from tests.doubles import KAMPALA_LABELS, KAMPALA_Z20


def _count(png, colour: str) -> int:
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    want = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - want).sum(axis=-1) < 40).sum())


def test_sheet_draws_truth_and_predicted_outlines(tmp_path):
    truth = gpd.read_file(KAMPALA_LABELS)
    predicted = tmp_path / "pred.gpkg"
    truth.iloc[: len(truth) // 2].to_crs("EPSG:3857").to_file(predicted, layer="buildings", driver="GPKG")
    panels = [Panel(KAMPALA_Z20, predicted, KAMPALA_LABELS, "kampala: half found"),
              Panel(KAMPALA_Z20, predicted, KAMPALA_LABELS, "kampala again")]
    png = render_contact_sheet(panels, tmp_path / "sheet.png", columns=2, panel_px=200)
    assert Image.open(png).size[0] >= 400
    assert _count(png, PREDICTED) > 100 and _count(png, TRUTH) > 100  # both sets of outlines are drawn


def test_sheet_needs_a_panel(tmp_path):
    with pytest.raises(ValueError, match="at least one panel"):
        render_contact_sheet([], tmp_path / "x.png")
