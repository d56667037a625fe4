"""The torch-only GPU trainer (fpn_geo.train.gpu) on a synthetic cache.

This file imports neither rasterio nor pydantic, and needs no conftest, so it also runs on the GPU machine
(``pytest --noconftest tests/test_train_gpu.py``, as device/train_gpu.sh does). The CUDA test skips
without a GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("rasterio", "geopandas", "shapely", "pyproj", "pydantic", "yaml", "pyogrio", "fiona", "affine")


def synthetic_cache(path: Path, gsds=(0.3,), side: int = 320) -> Path:
    """Two sources of squares (interior 1, 1-px border 2), the first with a held-out eastern half (target 255)."""
    from torchvision.io import encode_jpeg

    rng = np.random.default_rng(0)
    sources, arrays = [], {}
    for i in range(2):
        img = np.full((3, side, side), 90, np.uint8)
        tgt = np.zeros((side, side), np.uint8)
        for _ in range(12):
            r, c = rng.integers(0, side - 30, 2)
            s = int(rng.integers(10, 28))
            img[:, r : r + s, c : c + s] = 200
            tgt[r : r + s, c : c + s] = 2
            tgt[r + 1 : r + s - 1, c + 1 : c + s - 1] = 1
        block = None
        if i == 0:
            block = [0, side // 2 - 8, side, side]
            img[:, :, block[1] :] = 0
            tgt[:, block[1] :] = 255
        arrays[f"s{i}_jpeg"] = encode_jpeg(torch.from_numpy(img), quality=92).numpy()
        for k, g in enumerate(gsds):
            arrays[f"s{i}_t{k}"] = tgt
        sources.append({
            "name": f"synthetic{i}", "place": f"place{i}", "weight": 0.5, "store_gsd": gsds[0],
            "store_shape": [side, side],
            "grids": [{"gsd": g, "shape": [side, side], "block": block} for g in gsds],
        })
    config = {
        "chip": 64, "batch": 4, "seed": 0, "lr": 1e-3, "weight_decay": 1e-4, "warmup_steps": 2,
        "class_weights": [1, 1, 3],
        "dice_weight": 1.0, "depth": 18, "fpn_channels": 32, "head_channels": 32, "bands": [1, 2, 3],
        "scale_aug": [0.7, 1.4], "colour_aug": 0.25, "blur_p": 0.5,
    }
    meta = {"format": "fpn-geo-train-cache/1", "gsds": list(gsds), "classes": ["background", "building", "separator"],
            "mean": [120.0, 120.0, 120.0], "std": [50.0, 50.0, 50.0], "config": config, "sources": sources}
    np.savez_compressed(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    return path


def test_chips_never_touch_the_held_out_block(tmp_path):
    from fpn_geo.train.gpu import ChipBatcher, load_cache, sources_on_device

    meta, arrays = load_cache(synthetic_cache(tmp_path / "c.npz"))
    sources = sources_on_device(meta, arrays, 0.3, torch.device("cpu"), 96)
    batcher = ChipBatcher(sources, 64, 8, meta["mean"], meta["std"], (0.7, 1.4), 0.25, 0.5, seed=1)
    block = sources[0].block
    for q in (next(batcher.positions) for _ in range(2000)):
        if q.source == 0:
            assert q.col + batcher.max_side <= block.col0  # the largest zoomed crop stays west of the block
    x, y = next(batcher)
    assert x.shape == (8, 3, 64, 64) and y.shape == (8, 64, 64) and torch.isfinite(x).all()
    assert set(torch.unique(y).tolist()) <= {0, 1, 2, 255}


def test_trainer_runs_without_the_geo_stack(tmp_path):
    """The GPU machine has no rasterio, geopandas, shapely, pyproj, pydantic or yaml: the trainer must not need them."""
    cache = synthetic_cache(tmp_path / "c.npz", gsds=(0.3, 0.15))
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {BLOCKED!r}:
            raise ImportError('blocked for this test: ' + name)
sys.meta_path.insert(0, Block())
from fpn_geo.train.gpu import main
sys.exit(main(['--cache', {str(cache)!r}, '--out-dir', {str(tmp_path / 'out')!r}, '--device', 'cpu',
               '--max-steps', '2', '--deadline-minutes', '1']))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "train_gpu.json").read_text())
    assert sorted(report["models"]) == ["fpn_r18_gsd015", "fpn_r18_gsd030"]
    sums = (tmp_path / "out" / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == sum(len(m["parts"]) for m in report["models"].values())


def _train_and_join(tmp_path, device: str, steps: int) -> dict:
    from fpn_geo.train.gpu import main
    from fpn_geo.train.join_parts import join

    cache = synthetic_cache(tmp_path / "c.npz")
    out = tmp_path / "out"
    args = ["--cache", str(cache), "--out-dir", str(out), "--device", device, "--max-steps", str(steps),
            "--deadline-minutes", "2"]
    assert main(args) == 0
    report = json.loads((out / "train_gpu.json").read_text())
    (ckpt,) = join(out, tmp_path / "joined")
    from safetensors.torch import load_file

    from fpn_geo.model.meta import ModelMeta
    from fpn_geo.model.segmenter import BuildingSegmenter

    meta = ModelMeta.from_dict(json.loads(ckpt.with_suffix(".json").read_text()))
    state = load_file(str(ckpt))
    assert all(v.dtype in (torch.float16, torch.float32, torch.int64) for v in state.values())
    assert any(v.dtype == torch.float16 for v in state.values())  # fp16 on disk
    model = BuildingSegmenter(meta.depth, 3, 3, meta.fpn_channels, meta.head_channels)
    model.load_state_dict(state)  # fp16 copied into fp32 parameters
    assert next(model.parameters()).dtype == torch.float32
    return report["models"]["fpn_r18_gsd030"]["metrics"]


def test_cpu_training_writes_checkpoint_parts_that_join(tmp_path):
    m = _train_and_join(tmp_path, "cpu", 3)
    assert m["steps"] == 3 and m["device"] == "cpu"


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (runs in device/train_gpu.sh on the device)"
)
def test_cuda_training_bf16_channels_last(tmp_path):
    m = _train_and_join(tmp_path, "cuda", 30)
    assert m["steps"] == 30 and m["device"] != "cpu" and m["chips_per_s"] > 0
    losses = [loss for _, _, loss in m["loss_curve"]]
    assert all(np.isfinite(losses))


def _whole(out: Path) -> Path:
    (ckpt,) = sorted((out / "whole").glob("*.safetensors"))
    return ckpt


def _state(ckpt: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(ckpt))


def test_warm_start_continues_the_checkpoint_and_extends_its_ledger(tmp_path, capsys):
    """Zero steps from --init give back its weights bit for bit, its normalisation, a new GSD and one more
    ledger entry; a few steps move the weights; a frozen backbone (BatchNorm statistics included) does not move."""
    from fpn_geo.model.checkpoint import load_checkpoint
    from fpn_geo.train.gpu import main
    from fpn_geo.train.ledger import totals

    cache = synthetic_cache(tmp_path / "c.npz", gsds=(0.3, 0.15))
    base = ["--cache", str(cache), "--device", "cpu", "--deadline-minutes", "2", "--keep-whole", "--threads", "1"]
    assert main([*base, "--out-dir", str(tmp_path / "a"), "--gsd", "0.3", "--max-steps", "2"]) == 0
    parent = _whole(tmp_path / "a")
    pmeta = json.loads(parent.with_suffix(".json").read_text())
    pmeta["mean"], pmeta["std"] = [101.0, 102.0, 103.0], [41.0, 42.0, 43.0]  # not the cache's: must survive
    parent.with_suffix(".json").write_text(json.dumps(pmeta))

    assert main([*base, "--out-dir", str(tmp_path / "b"), "--gsd", "0.15", "--max-steps", "0", "--init",
                 str(parent)]) == 0
    same = _whole(tmp_path / "b")
    a, b = _state(parent), _state(same)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model, meta = load_checkpoint(same)  # the repo's loader reads the whole checkpoint
    assert meta.gsd_m == 0.15 and meta.mean == (101.0, 102.0, 103.0) and meta.std == (41.0, 42.0, 43.0)
    ledger = meta.extra["ledger"]
    assert len(ledger) == 2 and ledger[0] == pmeta["extra"]["ledger"][0]
    assert ledger[1]["init_sha256"] == pmeta["weights_sha256"] and ledger[1]["steps"] == 0
    assert ledger[1]["data"]["cache_sha256"] == meta.extra["training"]["cache_sha256"]
    assert [s["name"] for s in ledger[1]["data"]["sources"]] == ["synthetic0", "synthetic1"]
    assert totals(ledger)["steps"] == ledger[0]["steps"] == 2

    assert main([*base, "--out-dir", str(tmp_path / "c"), "--gsd", "0.3", "--max-steps", "2", "--init", str(parent),
                 "--lr", "0.01", "--warmup", "0", "--freeze-backbone"]) == 0
    c = _state(_whole(tmp_path / "c"))
    moved = {k for k in a if not torch.equal(a[k], c[k])}
    assert moved and all(not k.startswith("fpn.backbone.") for k in moved)  # the head moved, the body did not
    assert any(k.startswith("head.") for k in moved)
    cmeta = json.loads(_whole(tmp_path / "c").with_suffix(".json").read_text())
    assert len(cmeta["extra"]["ledger"]) == 2 and cmeta["extra"]["ledger"][1]["freeze_backbone"] is True

    assert main([*base, "--out-dir", str(tmp_path / "d"), "--gsd", "0.3", "--max-steps", "2", "--init", str(parent),
                 "--lr", "0.01", "--warmup", "0", "--backbone-lr-mult", "0.1"]) == 0
    d = _state(_whole(tmp_path / "d"))
    assert any(not torch.equal(a[k], d[k]) for k in a if k.startswith("fpn.backbone.body.conv1"))


def test_warm_start_refuses_another_architecture_on_one_line(tmp_path, capsys):
    from fpn_geo.train.gpu import main

    cache = synthetic_cache(tmp_path / "c.npz")
    base = ["--cache", str(cache), "--device", "cpu", "--deadline-minutes", "1", "--keep-whole", "--threads", "1"]
    assert main([*base, "--out-dir", str(tmp_path / "a"), "--max-steps", "1"]) == 0
    capsys.readouterr()
    assert main([*base, "--out-dir", str(tmp_path / "b"), "--max-steps", "1", "--init", str(_whole(tmp_path / "a")),
                 "--fpn-channels", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fpn_channels 32 but this run asks for 64" in err
    assert not (tmp_path / "b" / "train_gpu.json").exists()


def test_ledger_totals_and_the_entry_rebuilt_for_a_checkpoint_without_one():
    from fpn_geo.train.ledger import extended, ledger_of, run_entry, totals

    old = {"training": {"trainer": "fpn_geo.train.gpu", "device": "NVIDIA H200", "train_seconds": 162.7,
                        "steps": 4986, "chips": 159552, "gsd_m": 0.15, "torch": "2.11.0+cu130",
                        "sources": [{"name": "kampala", "place": "kampala", "weight": 0.8}]}}
    (first,) = ledger_of(old, date="2026-11-27")
    assert first["reconstructed"] is True and first["seconds"] == 162.7 and first["device"] == "NVIDIA H200"
    assert first["date"] == "2026-11-27" and first["data"]["sources"] == [{"name": "kampala", "place": "kampala"}]
    run = run_entry(trainer="t", device="cpu", seconds=1500.04, steps=300, chips=2400, gsd_m=0.3, data={},
                    init_sha256="ab" * 32, torch_version="x")
    ledger = extended([first], run)
    assert ledger[0] == first and "reconstructed" not in ledger[1]
    assert totals(ledger) == {"runs": 2, "seconds": 1662.7, "steps": 5286, "chips": 161952,
                              "device_seconds": {"NVIDIA H200": 162.7, "cpu": 1500.0}}
    assert ledger_of({}) == [] and ledger_of({"ledger": ledger}) == ledger


def test_the_shipped_model_carries_its_ledger():
    meta = json.loads((ROOT / "models" / "default.json").read_text())
    from fpn_geo.train.ledger import totals

    ledger = meta["extra"]["ledger"]
    assert ledger and all(e["seconds"] > 0 and e["steps"] > 0 and e["chips"] > 0 for e in ledger)
    assert totals(ledger)["steps"] >= meta["extra"]["training"]["steps"]


def test_save_every_leaves_a_loadable_checkpoint_while_training(tmp_path):
    """``--save-every``: a long CPU run that is killed still leaves its latest checkpoint, ledger included."""
    from fpn_geo.model.checkpoint import load_checkpoint
    from fpn_geo.train.gpu import load_cache, parse_args, train_one

    cache = synthetic_cache(tmp_path / "c.npz")
    args = parse_args(["--cache", str(cache), "--out-dir", str(tmp_path), "--device", "cpu", "--max-steps", "2",
                       "--save-every", "1e-9"])
    args.cache_sha256 = "0" * 64
    meta, arrays = load_cache(cache)
    seen = []

    def log(line: str) -> None:
        if "saved" in line:
            _, m = load_checkpoint(tmp_path / "m.safetensors")
            seen.append(m.extra["ledger"][-1]["steps"])

    train_one(meta, arrays, 0.3, 60.0, torch.device("cpu"), args, log=log, save_to=tmp_path / "m.safetensors")
    assert seen == [1, 2]
