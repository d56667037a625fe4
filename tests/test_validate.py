"""Held-out validation goes through the production path and scores what the CLI scores; the training cache
reads every new set with its labels on the imagery, and never holds a held-out block's pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fpn_geo.cli import main
from fpn_geo.model import ModelMeta, build_model, load_checkpoint, save_checkpoint
from fpn_geo.train import load_train_config
from fpn_geo.train.samplers import fraction_block
from tests.doubles import DATA

CONFIG = DATA.parent / "configs" / "train_default.yaml"
SATELLITE = DATA.parent / "configs" / "train_satellite.yaml"
ONE_MODEL = DATA.parent / "configs" / "train_one_model.yaml"  # issue 17's design (a): every set in one model
DRONE_PLACES = {"kampala", "banepa", "zanzibar", "nairobi", "catanduanes"}
SATELLITE_PLACES = {"rio", "houston", "carolinas", "chicago", "east_asia", "christchurch"}
TRAINING_ONLY = {"paris", "shanghai", "kitsap_tyrol_vienna"}  # fewer than 60 buildings: no held-out block


@pytest.fixture(scope="module")
def separator_checkpoint(tmp_path_factory):
    """A small random 3-class separator model at 0.3 m (its scores are poor but not empty: FP and pixel IoU > 0)."""
    torch.manual_seed(3)
    meta = ModelMeta(depth=18, bands=(1, 2, 3), mean=(110.0, 110.0, 100.0), std=(50.0, 50.0, 50.0),
                     classes=("background", "building", "separator"), gsd_m=0.3, fpn_channels=32, head_channels=32)
    model = build_model(meta)
    with torch.no_grad():
        model.head.predictor.bias.copy_(torch.tensor([0.0, 0.4, -0.2]))
    path = tmp_path_factory.mktemp("ckpt") / "sep.safetensors"
    save_checkpoint(model, meta, path)
    return path


def test_validation_equals_cli_segment_plus_evaluate(tmp_path, separator_checkpoint):
    from fpn_geo.train.validate import export_blocks, score_block, segmenter_from_model

    cfg = load_train_config(CONFIG)
    (block,) = [b for b in export_blocks(cfg, tmp_path / "blocks") if b.place == "rio"]
    model, meta = load_checkpoint(separator_checkpoint)  # an in-memory model, as the training loop holds it
    ours = score_block(segmenter_from_model(model, meta, "cpu"), block, tmp_path / "val", threshold=0.5, separate=True)
    gpkg, report = tmp_path / "cli.gpkg", tmp_path / "cli.json"
    assert main(["segment", str(block.image), "--model", str(separator_checkpoint), "--out", str(gpkg),
                 "--device", "cpu", "--threshold", "0.5", "--no-probability", "-q"]) == 0
    assert main(["evaluate", str(gpkg), "--truth", str(block.truth), "--raster", str(block.image), "--min-area", "4",
                 "--out", str(report)]) == 0
    cli = json.loads(report.read_text())
    assert (ours["tp"], ours["fp"], ours["fn"]) == (cli["building"]["TP"], cli["building"]["FP"], cli["building"]["FN"])
    assert ours["f1"] == pytest.approx(cli["building"]["f1"]) and ours["pixel_iou"] == pytest.approx(cli["pixel_iou"])
    assert ours["fp"] + ours["tp"] > 0 and cli["n_truth"] >= 70  # a real comparison, not two empty files


@pytest.mark.parametrize("config", [CONFIG, SATELLITE, ONE_MODEL], ids=["default", "satellite", "one_model"])
def test_one_held_out_block_per_place_with_60_buildings(config):
    import pyogrio

    cfg = load_train_config(config)
    buildings: dict[str, int] = {}
    for s in cfg.sources:
        for _img, lab, _kind in s.pairs(cfg.root):
            buildings[s.place or s.name] = buildings.get(s.place or s.name, 0) + pyogrio.read_info(lab)["features"]
    held = [s.place or s.name for s in cfg.sources if s.val_block]
    assert len(held) == len(set(held))  # one block per place
    assert set(held) == {p for p, n in buildings.items() if n >= 60}
    everything = DRONE_PLACES | SATELLITE_PLACES
    expected = {CONFIG: DRONE_PLACES | {"rio"}, SATELLITE: SATELLITE_PLACES}.get(config, everything)
    assert set(held) == expected
    assert set(buildings) - set(held) == (set() if config == CONFIG else TRAINING_ONLY)
    assert {s.imagery for s in cfg.sources} <= {"drone", "satellite"} and all(s.imagery for s in cfg.sources)


def test_non_commercial_data_is_left_out_by_one_line():
    everything = load_train_config(SATELLITE)
    commercial = load_train_config(SATELLITE, non_commercial_data=False)
    dropped = {s.name for s in everything.sources} - {s.name for s in commercial.sources}
    assert dropped and all("xbd_" in s.image for s in everything.sources if s.name in dropped)
    assert all(s.commercial for s in commercial.sources)
    assert all(s.licence == "CC-BY-NC-SA-4.0" for s in everything.sources if not s.commercial)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from fpn_geo.train.cache import prepare_cache

    cfg = load_train_config(ONE_MODEL, cache_gsds=(0.3,))  # every set, drone and satellite
    return prepare_cache(cfg, tmp_path_factory.mktemp("cache") / "cache.npz"), cfg


def test_cache_reads_every_set_with_labels_on_the_imagery(cache):
    """Every source: the building pixels of the target are brighter-textured roofs where the labels say, i.e.
    the labels land on the imagery after reprojection (the target's buildings sit inside the valid image,
    and the image differs inside and outside them)."""
    from fpn_geo.train.gpu import load_cache, sources_on_device

    path, cfg = cache
    meta, arrays = load_cache(path)
    names = {r["name"].split("/")[0] for r in meta["sources"]}
    assert names == {s.name for s in cfg.sources}
    assert {r["place"] for r in meta["sources"]} == DRONE_PLACES | SATELLITE_PLACES | TRAINING_ONLY
    for rec in meta["sources"]:  # recorded inside the repository, as the ledger will carry them
        assert rec["image"].startswith("data/") and rec["labels"].startswith("data/"), rec["name"]
    srcs = sources_on_device(meta, arrays, 0.3, torch.device("cpu"), 0)
    for rec, s in zip(meta["sources"], srcs):
        t = s.target.numpy()
        if rec["buildings"] == 0 or not ((t == 1) | (t == 2)).any():
            continue
        img = s.image.numpy().astype(np.float32).mean(axis=0)
        bld = (t == 1) | (t == 2)
        bg = t == 0
        assert bld.sum() > 50, rec["name"]
        assert (img[bld] > 0).mean() > 0.95, rec["name"]  # buildings fall on imagery, not on blank/nodata
        # roofs and their surroundings differ: a misplaced label (e.g. lon/lat burnt on metres) would not
        assert abs(img[bld].mean() - img[bg].mean()) > 3 or abs(img[bld].std() - img[bg].std()) > 3, rec["name"]


def test_cache_never_holds_a_held_out_block(cache):
    from fpn_geo.train.gpu import load_cache, sources_on_device

    path, cfg = cache
    meta, arrays = load_cache(path)
    srcs = sources_on_device(meta, arrays, 0.3, torch.device("cpu"), 0)
    n = 0
    for rec, s in zip(meta["sources"], srcs):
        if not rec["val_block"]:
            assert rec["grids"][0]["block"] is None
            continue
        n += 1
        h, w = rec["grids"][0]["shape"]
        inner = fraction_block(tuple(rec["val_block"]), h, w)  # what the evaluation cuts, on this grid
        b = rec["grids"][0]["block"]
        assert b[0] <= inner.row0 and b[1] <= inner.col0 and b[2] >= inner.row1 and b[3] >= inner.col1
        assert (s.target[b[0]:b[2], b[1]:b[3]] == 255).all()
        img = s.image[:, inner.row0:inner.row1, inner.col0:inner.col1].float()
        assert img.mean() < 2.0  # blanked before JPEG (a little ringing at the edge is all that is left)
    assert n == len(DRONE_PLACES | SATELLITE_PLACES)
