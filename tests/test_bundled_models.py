"""The checkpoints shipped in models/: each declares the scene GSDs it serves, the GSD rule picks the drone model
for drone imagery and the satellite model for satellite scenes, and each card's licences and ledger are there."""

from __future__ import annotations

import json

import pytest

from fpn_geo.model.meta import read_meta
from fpn_geo.model.registry import bundled_models, choose_model, pick
from fpn_geo.train.ledger import ledger_of, totals
from tests.doubles import REPO
from tests.test_model_choice import scene_at

MODELS = REPO / "models"


@pytest.mark.parametrize("gsd,name", [(0.075, "default"), (0.15, "default"), (0.3, "satellite"), (0.5, "satellite")])
def test_the_gsd_rule_picks_the_bundled_model_that_serves_the_scene(gsd, name, tmp_path, monkeypatch):
    monkeypatch.delenv("FPN_GEO_MODELS", raising=False)
    assert pick(gsd, bundled_models(MODELS)).name == name
    choice = choose_model(str(scene_at(tmp_path / "scene.tif", gsd)))  # the real scene path, as the CLI calls it
    assert choice.name == name and choice.covered and choice.selection.startswith(f"auto (scene gsd {gsd:.3g} m")


def test_bundled_ranges_meet_without_a_gap_and_post_processing_travels():
    drone, satellite = read_meta(MODELS / "default.safetensors"), read_meta(MODELS / "satellite.safetensors")
    assert drone.serves_m[1] == satellite.serves_m[0] and drone.gsd_m == 0.15 and satellite.gsd_m == 0.3
    assert satellite.postprocess and set(satellite.postprocess) >= {"threshold", "separate_touching", "min_area_m2"}


def test_the_satellite_model_continues_the_drone_model_and_its_ledger_adds_up():
    extra = json.loads((MODELS / "satellite.json").read_text())["extra"]
    ledger = ledger_of(extra)
    drone_sha = json.loads((MODELS / "default.json").read_text())["weights_sha256"]
    assert ledger[1]["init_sha256"] == drone_sha  # warm-started from the shipped drone model
    assert all(e["init_sha256"] for e in ledger[1:]) and len(ledger) >= 3
    t = totals(ledger)
    assert t["seconds"] == pytest.approx(sum(e["seconds"] for e in ledger)) and t["runs"] == len(ledger)


def test_each_model_card_opens_with_the_licences_that_bind_it():
    card = (MODELS / "MODEL_CARD.md").read_text()
    head = card[: card.index("## ", card.index("Licences"))] if "Licences" in card else ""
    assert "CC BY-NC-SA 4.0" in head and "satellite.safetensors" in head and "default.safetensors" in head
