"""Bundled models chosen by the scene's GSD (fpn_geo.model.registry), post-processing defaults that travel
with a checkpoint (config.with_model_defaults), and `fpn-geo info CKPT`'s summary.

Two tiny checkpoints stand in for the drone and satellite models: ranges [0.05, 0.25] and [0.25, 0.6]."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import from_origin

from fpn_geo.cli import main
from fpn_geo.config import SegmentConfig, load_config, with_model_defaults
from fpn_geo.errors import CheckpointError
from fpn_geo.geopackage import read_provenance
from fpn_geo.model.meta import ModelMeta, read_meta
from fpn_geo.model.registry import MODELS_ENV, Candidate, bundled_models, choose_model, pick
from fpn_geo.pipeline import plan_scene
from tests.doubles import REPO, write_raster
from tests.hostile import assert_one_line_failure, run_inprocess

DRONE = {"gsd_m": 0.15, "gsd_range_m": (0.05, 0.25), "postprocess": {"threshold": 0.45}}
SATELLITE = {
    "gsd_m": 0.3, "gsd_range_m": (0.25, 0.6),
    "postprocess": {"threshold": 0.6, "separate_touching": False, "min_area_m2": 9.0},
}


def tiny_checkpoint(path: Path, **meta_kw) -> Path:
    """A random-weights ResNet-18 with narrow FPN and head: a real checkpoint, quick to write and load."""
    import torch

    from fpn_geo.model import build_model, save_checkpoint

    torch.manual_seed(0)
    meta = ModelMeta(depth=18, mean=(100.0,) * 3, std=(50.0,) * 3, fpn_channels=32, head_channels=32, **meta_kw)
    save_checkpoint(build_model(meta), meta, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    tiny_checkpoint(folder / "drone.safetensors", **DRONE)
    tiny_checkpoint(folder / "satellite.safetensors", **SATELLITE)
    (folder / "stray.safetensors").write_bytes(b"weights without metadata are not a checkpoint")
    return folder


def scene_at(path: Path, gsd_m: float, degrees: bool = False) -> Path:
    """A 96x96 RGB scene of `gsd_m` metres per pixel, in UTM 36N, or in degrees (EPSG:4326) near Kampala."""
    data = np.random.default_rng(1).integers(0, 255, (3, 96, 96), dtype=np.uint8)
    if degrees:
        lat = 0.35
        dx, dy = gsd_m / (111_320 * math.cos(math.radians(lat))), gsd_m / 110_574
        return write_raster(path, data, crs="EPSG:4326", transform=from_origin(32.58, lat, dx, dy))
    return write_raster(path, data, transform=from_origin(450_000, 40_000, gsd_m, gsd_m))


def candidate(name: str, gsd: float | None, lo: float, hi: float) -> Candidate:
    return Candidate(f"/m/{name}.safetensors", name, gsd, (lo, hi))


DRONE_C, SAT_C = candidate("drone", 0.15, 0.05, 0.25), candidate("satellite", 0.3, 0.25, 0.6)
LEGACY_C = candidate("legacy", 0.15, 0.0, math.inf)  # a checkpoint without gsd_range_m serves every GSD


@pytest.mark.parametrize("gsd,name", [(0.075, "drone"), (0.3, "satellite"), (0.5, "satellite"), (0.25, "drone")])
def test_the_range_that_covers_the_scene_wins_and_a_shared_end_goes_to_the_narrower(gsd, name):
    choice = pick(gsd, [SAT_C, LEGACY_C, DRONE_C])  # the legacy catch-all covers all: the narrower range wins
    assert choice.name == name and choice.covered
    lo, hi = (DRONE_C if name == "drone" else SAT_C).serves_m
    assert choice.selection == f"auto (scene gsd {gsd:.3g} m in [{lo:g}, {hi:g}])"


def test_equal_ranges_go_to_the_nearest_model_gsd():
    a, b = candidate("a", 0.1, 0.05, 0.6), candidate("b", 0.4, 0.05, 0.6)
    assert pick(0.3, [a, b]).name == "b" and pick(0.15, [a, b]).name == "a"


def test_a_scene_no_range_covers_gets_the_nearest_range_and_says_so():
    far = pick(2.0, [DRONE_C, SAT_C])
    assert far.name == "satellite" and not far.covered and "outside every range; nearest [0.25, 0.6]" in far.selection
    assert pick(0.01, [DRONE_C, SAT_C]).name == "drone"
    assert pick(2.0, [DRONE_C, SAT_C, LEGACY_C]).name == "legacy"  # a catch-all covers it


def test_choose_model_reads_the_folder_and_an_explicit_model_wins(models, tmp_path, caplog):
    assert [c.name for c in bundled_models(models)] == ["drone", "satellite"]  # the stray weights are passed over
    scene = scene_at(tmp_path / "s.tif", 0.5)
    assert choose_model(str(scene), directory=models).name == "satellite"
    explicit = choose_model(str(scene), models / "drone.safetensors", directory=models)
    assert (explicit.name, explicit.selection) == ("drone", "explicit")
    far = choose_model(str(scene_at(tmp_path / "far.tif", 3.0)), directory=models)
    assert far.name == "satellite" and "no bundled model serves this scene's GSD" in caplog.text


def test_the_shipped_model_declares_its_range_and_serves_the_drone_sample():
    meta = read_meta(REPO / "models" / "default.safetensors")
    lo, hi = meta.serves_m
    assert meta.gsd_range_m is not None and lo <= meta.gsd_m <= hi
    assert set(meta.postprocess) <= {"threshold", "separate_touching", "min_area_m2", "simplify_m", "regularize"}
    config = meta.extra.get("training", {}).get("config", {})
    assert config.get("gsd_m", meta.gsd_m) == meta.gsd_m, (
        "the embedded training config's gsd_m differs from the model's: set it to the GSD the model trained at, "
        "with a note in extra.training.config_note (issue 20 item 5)"
    )
    sample = REPO / "data" / "kampala_oam" / "mosaic_z20_6x4_1536x1024.tif"
    choice = choose_model(str(sample), directory=REPO / "models")  # today the default; later a drone model
    assert choice.covered and choice.selection.startswith("auto (scene gsd 0.149 m in")


@pytest.mark.parametrize(
    "gsd,degrees,name", [(0.075, False, "drone"), (0.3, True, "satellite"), (0.5, False, "satellite")],
    ids=["0.075m", "0.3m-epsg4326", "0.5m"],
)
def test_segment_without_model_uses_the_bundled_one_and_reports_it(
    models, tmp_path, monkeypatch, capsys, gsd, degrees, name
):
    monkeypatch.setenv(MODELS_ENV, str(models))
    scene, out = scene_at(tmp_path / "scene.tif", gsd, degrees), tmp_path / "o.gpkg"
    assert main(["segment", str(scene), "--out", str(out), "--no-probability", "-q"]) == 0
    line = capsys.readouterr().out.strip()
    lo, hi = (DRONE if name == "drone" else SATELLITE)["gsd_range_m"]
    assert re.search(rf", model {name}, auto \(scene gsd [\d.]+ m in \[{lo:g}, {hi:g}\]\) -> .*o\.gpkg$", line), line
    prov = read_provenance(out)
    assert prov is not None and prov["model_name"] == name
    assert prov["checkpoint_path"] == str(models / f"{name}.safetensors")
    assert prov["model_selection"].startswith("auto (scene gsd") and f"[{lo:g}, {hi:g}]" in prov["model_selection"]
    params = json.loads(prov["parameters"])
    expected = {**SegmentConfig().model_dump(), **(DRONE if name == "drone" else SATELLITE)["postprocess"]}
    assert {k: params[k] for k in ("threshold", "separate_touching", "min_area_m2")} == {
        k: expected[k] for k in ("threshold", "separate_touching", "min_area_m2")
    }


def test_flags_and_config_files_override_the_checkpoints_defaults(models, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(MODELS_ENV, str(models))
    scene, out = scene_at(tmp_path / "scene.tif", 0.5), tmp_path / "o.gpkg"
    (tmp_path / "c.yaml").write_text("min_area_m2: 2.5\n")
    args = ["segment", str(scene), "--out", str(out), "--no-probability", "-q", "--threshold", "0.35",
            "--config", str(tmp_path / "c.yaml")]
    assert main(args) == 0
    params = json.loads(read_provenance(out)["parameters"])
    assert (params["threshold"], params["min_area_m2"], params["separate_touching"]) == (0.35, 2.5, False)


def test_a_checkpoints_defaults_apply_only_where_nobody_set_a_value(tmp_path):
    meta = ModelMeta(depth=18, **SATELLITE)
    scene = str(scene_at(tmp_path / "s.tif", 0.3))
    plain = plan_scene(scene, meta, load_config()).cfg
    assert (plain.threshold, plain.separate_touching, plain.min_area_m2, plain.simplify_m) == (0.6, False, 9.0, 0.3)
    (tmp_path / "c.yaml").write_text("threshold: 0.5\nseparate_touching: true\n")
    filed = plan_scene(scene, meta, load_config(tmp_path / "c.yaml")).cfg
    assert (filed.threshold, filed.separate_touching, filed.min_area_m2) == (0.5, True, 9.0)
    flagged = plan_scene(scene, meta, load_config(tmp_path / "c.yaml", threshold=0.7)).cfg
    assert flagged.threshold == 0.7
    old = plan_scene(scene, ModelMeta(depth=18, gsd_m=0.3), load_config()).cfg  # a checkpoint without defaults
    keys = ("threshold", "separate_touching", "min_area_m2", "simplify_m", "regularize")
    assert [getattr(old, k) for k in keys] == [getattr(SegmentConfig(), k) for k in keys]
    assert with_model_defaults(SegmentConfig(threshold=0.2), {"threshold": 0.9}).threshold == 0.2


def test_the_flow_plans_with_the_same_choice(models, tmp_path, monkeypatch):
    from flows.segment import plan_scene_task

    monkeypatch.setenv(MODELS_ENV, str(models))
    plan = plan_scene_task.fn(str(scene_at(tmp_path / "s.tif", 0.075)), None, load_config())
    assert plan.checkpoint_path == str(models / "drone.safetensors") and plan.model_selection.startswith("auto")
    assert plan.cfg.threshold == DRONE["postprocess"]["threshold"]
    explicit = plan_scene_task.fn(str(tmp_path / "s.tif"), str(models / "satellite.safetensors"), load_config())
    assert explicit.model_selection == "explicit" and explicit.cfg.threshold == 0.6


def test_no_model_and_no_bundled_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "empty"))
    scene = scene_at(tmp_path / "s.tif", 0.3)
    code, err = run_inprocess(["segment", str(scene), "--out", str(tmp_path / "o.gpkg"), "-q"], capsys)
    assert_one_line_failure(code, err, "--model", MODELS_ENV)
    assert not (tmp_path / "o.gpkg").exists()


@pytest.mark.parametrize(
    "key,value,word",
    [
        ("gsd_range_m", [0.6, 0.25], "gsd_range_m"),
        ("gsd_range_m", [0.25], "gsd_range_m"),
        ("gsd_range_m", ["0.1", "1"], "gsd_range_m"),
        ("gsd_range_m", [-1, 0.5], "gsd_range_m"),
        ("gsd_range_m", [0.1, 1e999], "gsd_range_m"),
        ("postprocess", {"threshold": 1.5}, "postprocess.threshold"),
        ("postprocess", {"separate_touching": "yes"}, "postprocess.separate_touching"),
        ("postprocess", {"min_area_m2": -1}, "postprocess.min_area_m2"),
        ("postprocess", {"window": 1024}, "unknown key"),
        ("postprocess", [0.5], "postprocess"),
    ],
)
def test_bad_range_or_postprocess_metadata_is_refused(key, value, word):
    with pytest.raises(CheckpointError, match=re.escape(word)):
        ModelMeta.from_dict({"depth": 18, key: value})


def test_info_prints_a_summary_and_the_full_record_with_json(tmp_path, capsys):
    ledger = [
        {"trainer": "gpu", "device": "NVIDIA H200", "seconds": 162.7, "steps": 4986, "chips": 159552},
        {"trainer": "gpu", "device": "NVIDIA H100", "seconds": 480.0, "steps": 9000, "chips": 288000},
    ]
    ckpt = tiny_checkpoint(tmp_path / "satellite.safetensors", **SATELLITE, extra={"ledger": ledger})
    rows = [{"place": p, "threshold": 0.6, "separate": False, "f1": f} for p, f in (("paris", 0.61), ("vienna", 0.4))]
    (tmp_path / "satellite.heldout.json").write_text(json.dumps({"rows": rows}))
    assert main(["info", str(ckpt)]) == 0
    text = capsys.readouterr().out
    assert len(text.splitlines()) <= 15
    assert "resnet18-fpn32-semantic32" in text and "serves scene GSDs [0.25, 0.6] m" in text
    assert "threshold 0.6, separate_touching false, min_area_m2 9 (this model's defaults" in text
    assert "2 runs, 642.7 s, 13,986 steps, 447,552 chips" in text
    assert "paris 0.61, vienna 0.40; mean 0.505" in text
    assert main(["info", str(ckpt), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["gsd_range_m"] == [0.25, 0.6] and record["extra"]["ledger"] == ledger
