"""Training: config errors, samplers, sources at the model GSD, it learns, resume, validation scoring.

All runs use a real 512x512 crop of the Kampala z20 mosaic (15 cm) resampled to 0.3 m and a
slim ResNet-18 FPN, so the whole file stays well under a minute on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml

from fpn_geo.cli import main
from fpn_geo.errors import CheckpointError, ConfigError, InputError
from fpn_geo.evaluate import areas_m2
from fpn_geo.model import load_checkpoint
from fpn_geo.train import load_train_config, train
from fpn_geo.train.augment import Augment, dihedral
from fpn_geo.train.dataset import IGNORE, crop, load_source
from fpn_geo.train.history import read_rows
from fpn_geo.train.losses import CEDiceLoss
from fpn_geo.train.samplers import ChipQuery, Extent, GridChipSampler, PixelBox, RandomChipSampler
from tests.doubles import DATA, KAMPALA_LABELS, KAMPALA_Z20, write_raster


@pytest.fixture(scope="module")
def crop_tif(tmp_path_factory):
    """512x512 px (77 m) of the real Kampala z20 mosaic, with buildings in both halves."""
    with rasterio.open(KAMPALA_Z20) as src:
        window = rasterio.windows.Window(512, 256, 512, 512)
        data, transform, crs = src.read(window=window), src.window_transform(window), src.crs
    return write_raster(tmp_path_factory.mktemp("crop") / "kampala_crop.tif", data, crs=crs, transform=transform)


def tiny_config(crop_tif, out_dir, **kw) -> dict:
    cfg = dict(
        out_dir=str(out_dir), gsd_m=0.3, depth=18, fpn_channels=32, head_channels=32, chip=64, val_chip=64,
        val_overlap=0,
        batch=4, epochs=3, steps_per_epoch=6, lr=2e-3, warmup_steps=2, threads=1, seed=0, jitter=0.05,
        sources=[{
            "name": "kampala", "image": str(crop_tif), "labels": str(KAMPALA_LABELS), "val_block": [0.5, 0.0, 1.0, 1.0],
        }],
    )
    cfg.update(kw)
    return cfg


# --- config --------------------------------------------------------------------------------------


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_default_config_is_valid():
    cfg = load_train_config(DATA.parent / "configs" / "train_default.yaml")
    meta = json.loads((DATA.parent / "models" / "default.json").read_text())
    assert cfg.chip % 32 == 0 and cfg.gsd_m == meta["gsd_m"] == 0.15  # the config names the GSD that shipped
    assert any(s.val_block for s in cfg.sources)
    rio = {s.name: len(s.pairs(cfg.root)) for s in cfg.sources if s.place == "rio"}
    assert rio == {"rio": 1, "rio_a": 9, "rio_b": 5, "rio_aoi0": 7}  # 15 + 7 tiles, the held-out one exactly once


@pytest.mark.parametrize(
    "change, words",
    [
        ({"epoch": 3}, ["unknown key 'epoch'", "epochs"]),
        ({"chip": 250}, ["chip", "multiple of 32", "256"]),
        ({"epochs": "ten"}, ["epochs", "'ten'"]),
        ({"depth": 19}, ["depth"]),
        ({"val_overlap": 40}, ["val_overlap 40", "half"]),
    ],
)
def test_config_errors_name_the_key_and_the_fix(tmp_path, crop_tif, change, words):
    path = write_yaml(tmp_path / "bad.yaml", tiny_config(crop_tif, tmp_path, **change))
    with pytest.raises(ConfigError) as e:
        load_train_config(path)
    assert str(path) in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_source_errors_are_clear(tmp_path, crop_tif):
    src = {"name": "k", "image": str(crop_tif), "labels": str(KAMPALA_LABELS)}
    with pytest.raises(ConfigError, match="unknown key 'sources.0.label'"):
        load_train_config(**tiny_config(crop_tif, tmp_path, sources=[{**src, "label": "x"}]))
    with pytest.raises(ConfigError, match="exactly one of 'labels'"):
        load_train_config(
            **tiny_config(crop_tif, tmp_path, sources=[{**src, "mask": "m.tif", "val_block": [0.5, 0, 1, 1]}])
        )
    with pytest.raises(ConfigError, match=r"val_block \[0.5, 0.0, 0.2, 1.0\] must be fractions"):
        load_train_config(**tiny_config(crop_tif, tmp_path, sources=[{**src, "val_block": [0.5, 0, 0.2, 1]}]))
    with pytest.raises(ConfigError, match="no source has a val_block"):
        load_train_config(**tiny_config(crop_tif, tmp_path, sources=[src]))
    cfg = load_train_config(
        **tiny_config(crop_tif, tmp_path, sources=[{**src, "image": "nowhere/*.tif", "val_block": [0.5, 0, 1, 1]}])
    )
    with pytest.raises(ConfigError, match="no image matches 'nowhere/\\*.tif'"):
        cfg.sources[0].pairs(cfg.root)


def test_relative_paths_resolve_against_the_config_files_folder(tmp_path, crop_tif, monkeypatch):
    """A training config in another folder finds its data beside it, wherever it is run from."""
    folder = tmp_path / "project" / "cfg"
    (folder / "imgs").mkdir(parents=True)
    (folder / "imgs" / "a.tif").write_bytes(crop_tif.read_bytes())
    (folder / "labels.geojson").write_bytes(KAMPALA_LABELS.read_bytes())
    data = tiny_config(crop_tif, "out", sources=[{"name": "k", "image": "imgs/*.tif", "labels": "labels.geojson",
                                                  "val_block": [0.5, 0, 1, 1]}])
    path = write_yaml(folder / "train.yaml", data)
    monkeypatch.chdir(tmp_path)  # somewhere else
    cfg = load_train_config(path)
    assert cfg.root == folder.resolve()
    base = folder.resolve()
    assert cfg.sources[0].pairs(cfg.root) == [(base / "imgs" / "a.tif", base / "labels.geojson", "labels")]
    flagged = load_train_config(path, out_dir="elsewhere")  # a command-line path: relative to where it is typed
    assert Path(flagged.out_dir) == tmp_path.resolve() / "elsewhere"


def test_config_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_train_config(path)


# --- samplers, sources, augmentation, loss ---------------------------------------------------------


def test_random_chips_never_touch_the_held_out_block():
    block = PixelBox(0, 300, 400, 500)
    sampler = RandomChipSampler([Extent(400, 500, block)], size=64, length=500, gap=8, seed=1)
    qs = list(sampler)
    assert len(qs) == 500 and all(q.size == 64 for q in qs)
    assert not any(block.intersects(q.row, q.col, q.size, 8) for q in qs)
    assert max(q.col for q in qs) + 64 + 8 <= 300


def test_random_sampler_refuses_a_source_that_is_all_validation():
    with pytest.raises(ConfigError, match="no 64x64 training chip fits"):
        RandomChipSampler([Extent(100, 100, PixelBox(0, 0, 100, 100))], size=64, length=1)


def test_source_snaps_to_its_own_grid_and_checks_like_the_pipeline(crop_tif, tmp_path):
    """Training reads a scene by inference's rules: within 5% of the model's GSD, as it is; open_scene's checks."""
    s = load_source("k", crop_tif, KAMPALA_LABELS, "labels", 0.15, (1, 2, 3))  # the mosaic is 0.149 m
    assert s.shape == (512, 512)
    bad = write_raster(tmp_path / "nocrs.tif", np.zeros((3, 64, 64), np.uint8), crs=None)
    with pytest.raises(InputError, match="no CRS"):
        load_source("k", bad, KAMPALA_LABELS, "labels", 0.3, (1, 2, 3))
    with pytest.raises(InputError, match="band"):
        load_source("k", crop_tif, KAMPALA_LABELS, "labels", 0.3, (1, 2, 3, 4))


def test_grid_covers_the_block_exactly_once_or_more():
    block = PixelBox(0, 512, 508, 762)
    qs = list(GridChipSampler([Extent(508, 762, block), Extent(100, 100, None)], size=256, overlap=64))
    cover = np.zeros((508, 762), int)
    for q in qs:
        assert q.source == 0 and q.size % 32 == 0
        cover[q.row : q.row + q.size, q.col : q.col + q.size] += 1
    assert (cover[block.slices] >= 1).all() and cover[:, :512].sum() == 0


def test_source_is_resampled_to_the_model_gsd_with_labels_in_place(crop_tif):
    s = load_source("k", crop_tif, KAMPALA_LABELS, "labels", 0.3, (1, 2, 3), 2, 1.0, (0.5, 0, 1, 1))
    # 512 px of the mosaic are 512 * 0.149 m (true metres, measured in UTM) = 76 m = 254 px at 0.3 m
    assert s.shape == (254, 254) and abs(s.gsd_m - 0.3) < 0.005
    assert s.val_block == PixelBox(0, 127, 254, 254)  # rounded outwards: a pixel partly held out is held out
    assert set(np.unique(s.target)) <= {0, 1, 2}
    # buildings burnt where the labels are: their area in px matches their area in m² at 0.3 m
    inside = s.truth.clip(rasterio.transform.array_bounds(*s.shape, s.transform))
    px_m2 = s.footprint.sum() * s.gsd_m**2
    assert abs(px_m2 - areas_m2(inside).sum()) / px_m2 < 0.1


def test_mask_labels_give_the_same_buildings_as_polygons():
    img = DATA / "spacenet1_rio" / "images" / "3band_013022223130_Public_img54.tif"
    mask = DATA / "spacenet1_rio" / "masks" / img.name
    vec = DATA / "spacenet1_rio" / "labels_vectorized_from_masks" / f"{img.stem}_vectorized.geojson"
    a = load_source("m", img, mask, "mask", 0.5, (1, 2, 3))
    b = load_source("v", img, vec, "labels", 0.5, (1, 2, 3))
    assert a.footprint.sum() > 10000
    inter = (a.footprint & b.footprint).sum() / (a.footprint | b.footprint).sum()
    assert inter > 0.9


def test_crop_past_the_edge_is_padded_and_ignored(crop_tif):
    s = load_source("k", crop_tif, KAMPALA_LABELS, "labels", 0.3, (1, 2, 3))
    image, target = crop(s, ChipQuery(0, 222, 222, 64))  # the source is 254x254
    assert image.shape == (3, 64, 64) and target.shape == (64, 64)
    assert (target[32:, :] == IGNORE).all() and (target[:32, :32] != IGNORE).all()


def test_dihedral_moves_image_and_target_together():
    img = np.arange(2 * 4 * 4).reshape(2, 4, 4)
    tgt = img[0].copy()
    for k in range(4):
        for flip in (False, True):
            i, t = dihedral(img, tgt, k, flip)
            assert np.array_equal(i[0], t)
    i, t = Augment(0.1, seed=0)(img.astype(np.float32), tgt)
    assert i.shape == (2, 4, 4) and i.dtype == np.float32


def test_loss_ignores_padding_and_rewards_the_truth():
    y = torch.tensor([[[0, 1], [2, IGNORE]]])
    good = torch.nn.functional.one_hot(torch.tensor([[[0, 1], [2, 0]]]), 3).permute(0, 3, 1, 2).float() * 20
    loss = CEDiceLoss((1.0, 1.0, 2.0), dice_weight=1.0)
    assert loss(good, y)[0] < 0.05 < loss(-good, y)[0]


# --- training --------------------------------------------------------------------------------------


def test_it_learns_and_writes_its_record(tmp_path, crop_tif):
    """A few steps on a real crop: the training loss goes down; checkpoints, CSV and curve appear."""
    path = write_yaml(tmp_path / "tiny.yaml", tiny_config(crop_tif, tmp_path / "run", epochs=4, steps_per_epoch=5))
    assert main(["train", "--config", str(path), "-q"]) == 0
    rows = read_rows(tmp_path / "run" / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    losses = [r["train_loss"] for r in rows]
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(0.0 <= r["val_pixel_iou"] <= 1.0 and "val_f1_sep" in r for r in rows)
    assert (tmp_path / "run" / "curve.png").stat().st_size > 1000
    model, meta = load_checkpoint(tmp_path / "run" / "best.safetensors")
    assert meta.gsd_m == 0.3 and meta.classes == ("background", "building", "separator") and meta.depth == 18
    assert all(40 < m < 200 for m in meta.mean) and all(s > 5 for s in meta.std)  # stats of the crop in DN
    t = meta.extra["training"]
    assert t["config"]["chip"] == 64 and t["data"][0]["val_block_px"] == [0, 127, 254, 254]
    assert json.loads((tmp_path / "run" / "last.state.json").read_text())["progress"]["epoch"] == 4


def test_resume_continues_where_it_stopped(tmp_path, crop_tif):
    """A 3-epoch run killed after epoch 2 and resumed ends with the same weights as one uninterrupted run."""
    whole = train(load_train_config(**tiny_config(crop_tif, tmp_path / "whole", epochs=3, steps_per_epoch=3)))

    def kill_after_2(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    part = tiny_config(crop_tif, tmp_path / "part", epochs=3, steps_per_epoch=3)
    with pytest.raises(KeyboardInterrupt):
        train(load_train_config(**part), on_epoch=kill_after_2)
    resumed = train(load_train_config(**part, resume=str(tmp_path / "part" / "last.safetensors")))
    assert [r["epoch"] for r in resumed.history] == [3] and resumed.history[0]["step"] == 9
    assert [r["epoch"] for r in read_rows(tmp_path / "part" / "metrics.csv")] == [1, 2, 3]
    assert resumed.history[0]["train_loss"] == pytest.approx(whole.history[2]["train_loss"], rel=1e-4)
    a, _ = load_checkpoint(whole.last)
    b, _ = load_checkpoint(resumed.last)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(va.float(), vb.float(), atol=1e-5), k
    with pytest.raises(ConfigError, match="already finished epoch 3 of epochs=3; raise epochs"):
        train(load_train_config(**part, resume=str(resumed.last)))


def test_resume_needs_the_optimizer_state(tmp_path, crop_tif):
    run = train(load_train_config(**tiny_config(crop_tif, tmp_path / "r", epochs=1, steps_per_epoch=1)))
    (tmp_path / "r" / "last.state.safetensors").unlink()
    with pytest.raises(CheckpointError, match="last.state.safetensors and last.state.json must sit beside it"):
        train(
            load_train_config(
                **tiny_config(crop_tif, tmp_path / "r", epochs=2, steps_per_epoch=1, resume=str(run.last))
            )
        )



def test_init_continues_a_checkpoint_and_extends_its_ledger(tmp_path, crop_tif):
    """``fpn-geo train --init``: the checkpoint's weights (a frozen body stays them bit for bit), its normalisation
    and its ledger plus one entry; another architecture is refused."""
    first = train(load_train_config(**tiny_config(crop_tif, tmp_path / "a", epochs=1, steps_per_epoch=1)))
    a, ameta = load_checkpoint(first.last)
    (entry,) = ameta.extra["ledger"]
    assert entry["steps"] == 1 and entry["chips"] == 4 and entry["init_sha256"] is None and entry["device"] == "cpu"
    assert entry["data"]["sources"][0]["sha256"] and entry["trainer"] == "fpn_geo.train.loop"

    cfg = tiny_config(crop_tif, tmp_path / "b", epochs=1, steps_per_epoch=2, init=str(first.last), freeze_backbone=True,
                      sources=[{"name": "kampala", "image": str(crop_tif), "labels": str(KAMPALA_LABELS),
                                "val_block": [0.0, 0.0, 0.5, 1.0]}])  # other pixels: other statistics
    b, bmeta = load_checkpoint(train(load_train_config(**cfg)).last)
    assert bmeta.mean == ameta.mean and bmeta.std == ameta.std
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith("fpn.backbone."))
    assert any(not torch.equal(sa[k], sb[k]) for k in sa if k.startswith("head."))
    ledger = bmeta.extra["ledger"]
    assert len(ledger) == 2 and ledger[0] == entry
    assert ledger[1]["init_sha256"] == ameta.weights_sha256 and ledger[1]["steps"] == 2 and ledger[1]["freeze_backbone"]

    with pytest.raises(CheckpointError, match="fpn_channels 32 but this run asks for 64"):
        train(load_train_config(**tiny_config(crop_tif, tmp_path / "c", init=str(first.last), fpn_channels=64)))

# --- validation scoring ------------------------------------------------------------------------------


def test_holdout_export_is_the_block_training_never_saw(tmp_path):
    from fpn_geo.train.holdout import export_holdout

    cfg = load_train_config(DATA.parent / "configs" / "train_default.yaml")
    tif, gpkg = export_holdout(cfg, "kampala", tmp_path)
    with rasterio.open(tif) as crop_ds, rasterio.open(DATA / "kampala_oam" / "mosaic_z21_12x8_3072x2048.tif") as scene:
        assert crop_ds.height == scene.height and 0.3 < crop_ds.width / scene.width < 0.34  # the eastern third
        assert crop_ds.bounds.right == pytest.approx(scene.bounds.right) and crop_ds.crs == scene.crs
        assert np.array_equal(
            crop_ds.read(1, window=((0, 8), (0, 8))),
            scene.read(1, window=((0, 8), (scene.width - crop_ds.width, scene.width - crop_ds.width + 8))),
        )
    import geopandas as gpd

    assert 40 <= len(gpd.read_file(gpkg)) <= 50
    with pytest.raises(ConfigError, match="no val_block"):
        export_holdout(cfg, "rio_a", tmp_path)


def test_zanzibar_source_reprojects_its_labels_onto_the_training_grid():
    """Labels in EPSG:4326, image in UTM 37S at 7.7 cm: at 0.3 m the buildings land where the image shows them."""
    img, lab = DATA / "zanzibar" / "tanzania_sample.tif", DATA / "zanzibar" / "tanzania_sample.geojson"
    s = load_source("z", img, lab, "labels", 0.3, (1, 2, 3))
    assert s.crs.to_epsg() == 32737 and abs(s.gsd_m - 0.3) < 0.005
    bounds = rasterio.transform.array_bounds(*s.shape, s.transform)
    inside = s.truth.clip(bounds)
    inside = inside[inside.area > 1.0]
    assert len(inside) >= 5
    # burnt area in m² matches the polygons' area in m² (UTM: CRS units are metres)
    assert s.footprint.sum() * s.gsd_m**2 == pytest.approx(inside.area.sum(), rel=0.05)
