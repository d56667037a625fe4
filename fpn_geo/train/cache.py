"""The training cache: every source of a training config decoded once, for every model GSD, in one file.

Built here (rasterio, geopandas), read by the torch-only GPU trainer (``fpn_geo.train.gpu``) on a machine
that has neither. One compressed ``.npz`` holds, per source image:

- ``s{i}_jpeg``: the image at ``store_gsd`` = max(its own GSD, the finest model GSD), JPEG (quality 92);
  the held-out block plus ``holdout_margin_m`` is blanked (zeros) before encoding: its pixels never travel;
- ``s{i}_t{k}``: the target on the grid of model GSD ``cache_gsds[k]``: 0 background, 1 building (interior),
  2 separator (or contact), 255 ignore (outside the image's valid area, and the blanked held-out block);

and ``meta``: a JSON record (sources, places, weights, grids, blocks, normalization statistics, the config).

    python -m fpn_geo.train.cache --config configs/train_default.yaml --out runs/cache.npz
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fpn_geo import REPO_ROOT
from fpn_geo.train.config import TrainConfig
from fpn_geo.train.ledger import recorded_path
from fpn_geo.train.samplers import fraction_block
from fpn_geo.train.targets import IGNORE, classes_for, target_from_instances

log = logging.getLogger(__name__)

JPEG_QUALITY = 92
CACHE_FORMAT = "fpn-geo-train-cache/1"


def grid_shape(height: int, width: int, native_gsd: float, gsd: float) -> tuple[int, int]:
    """The shape of a scene resampled to ``gsd`` by the pipeline's rule (``georef.model_scale``, ``scaled_shape``)."""
    from fpn_geo.georef import model_scale, scaled_shape

    return scaled_shape(height, width, model_scale(native_gsd, gsd))


def _nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0]).astype(int), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1]).astype(int), mask.shape[1] - 1)
    return mask[rows][:, cols]


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """An (C, H, W) uint8 image as JPEG bytes (a uint8 array), via torchvision."""
    import torch
    from torchvision.io import encode_jpeg

    return encode_jpeg(torch.from_numpy(np.ascontiguousarray(image)), quality=quality).numpy()


def cache_source(
    name: str, place: str, image_path: Path, label_path: Path, cfg: TrainConfig, weight: float,
    val_block: tuple[float, float, float, float] | None,
) -> tuple[dict, dict[str, np.ndarray], tuple[np.ndarray, np.ndarray, int]]:
    """One image: its record, its arrays, and (sum, sum of squares, count) of its training pixels per band."""
    import rasterio
    from affine import Affine
    from rasterio.enums import Resampling

    from fpn_geo.errors import ConfigError, InputError
    from fpn_geo.hashing import sha256_file
    from fpn_geo.scene import open_scene
    from fpn_geo.truth import rasterize_instances, read_labels

    if label_path.suffix.lower() in (".tif", ".tiff"):
        raise ConfigError(f"source {name!r}: the training cache needs vector labels, not the mask {label_path.name}")
    gsds = tuple(float(g) for g in cfg.cache_gsds)
    scene = open_scene(str(image_path), tuple(cfg.bands))  # the product's checks
    if len(cfg.bands) != 3 or scene.dtype != "uint8":
        raise InputError(
            f"the training cache stores 3-band uint8 imagery as JPEG; {image_path} is {scene.count}x{scene.dtype}"
        )
    native = scene.gsd_m
    with rasterio.open(image_path) as src:
        store_gsd = max(native, min(gsds))
        sh, sw = grid_shape(src.height, src.width, native, store_gsd)
        image = src.read(list(cfg.bands), out_shape=(3, sh, sw), resampling=Resampling.bilinear)
        valid = src.dataset_mask(out_shape=(sh, sw), resampling=Resampling.nearest) > 0
        H, W, transform, crs = src.height, src.width, src.transform, src.crs
    truth = read_labels(label_path, crs)
    record = {
        "name": name, "place": place, "weight": weight,
        "image": recorded_path(image_path, REPO_ROOT), "labels": recorded_path(label_path, REPO_ROOT),
        "image_sha256": sha256_file(image_path), "labels_sha256": sha256_file(label_path),  # the data's version
        "native_gsd": native, "native_shape": [H, W], "store_gsd": store_gsd, "store_shape": [sh, sw],
        "val_block": list(val_block) if val_block else None, "crs_wkt": crs.to_wkt(), "transform": list(transform)[:6],
        "buildings": len(truth), "grids": [],
    }
    keep = valid.copy()
    if val_block:
        b = fraction_block(val_block, sh, sw, math.ceil(cfg.holdout_margin_m / store_gsd))
        held_out = (slice(None), *b.slices)
        image[held_out] = 0  # the held-out pixels never enter the cache
        keep[b.slices] = False
    arrays = {"jpeg": encode_jpeg(image)}
    for k, g in enumerate(gsds):
        h, w = grid_shape(H, W, native, g)
        t = transform * Affine.scale(W / w, H / h)
        target = target_from_instances(rasterize_instances(truth, t, (h, w)), cfg.target, cfg.contact_px)
        target[~_nearest(valid, (h, w))] = IGNORE
        block = None
        if val_block:
            bb = fraction_block(val_block, h, w, math.ceil(cfg.holdout_margin_m / g))
            target[bb.slices] = IGNORE
            block = [bb.row0, bb.col0, bb.row1, bb.col1]
        arrays[f"t{k}"] = target
        record["grids"].append({"gsd": g, "shape": [h, w], "block": block, "transform": list(t)[:6]})
    px = image[:, keep].astype(np.float64)
    stats = (px.sum(axis=1), (px**2).sum(axis=1), int(keep.sum()))
    log.info("cache %s: %s %dx%d at %.3f m (native %.3f m)", name, image_path.name, sh, sw, store_gsd, native)
    return record, arrays, stats


def prepare_cache(cfg: TrainConfig, out: str | Path, root: Path | None = None) -> Path:
    """Decode every source of ``cfg`` once and write the cache to ``out``; returns the path."""
    root = cfg.root if root is None else root
    records: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    mean_acc: dict[str, list] = {}
    for sc in cfg.sources:
        pairs = sc.pairs(root)
        for img, lab, _kind in pairs:
            name = sc.name if len(pairs) == 1 else f"{sc.name}/{img.stem}"
            rec, arr, (s1, s2, n) = cache_source(
                name, sc.place or sc.name, img, lab, cfg, sc.weight / len(pairs), sc.val_block
            )
            i = len(records)
            records.append(rec)
            arrays.update({f"s{i}_{k}": v for k, v in arr.items()})
            if n:
                acc = mean_acc.setdefault(rec["name"], [np.zeros(3), np.zeros(3), 0, rec["weight"]])
                acc[0] += s1
                acc[1] += s2
                acc[2] += n
    # per-band statistics: each source's mean weighted by its sampling weight (as the sampler draws chips)
    w = np.array([a[3] for a in mean_acc.values()])
    w = w / w.sum()
    means = np.array([a[0] / a[2] for a in mean_acc.values()])
    sqs = np.array([a[1] / a[2] for a in mean_acc.values()])
    mean = w @ means
    std = np.sqrt(np.maximum(w @ sqs - mean**2, 1e-6))
    meta = {
        "format": CACHE_FORMAT, "gsds": [float(g) for g in cfg.cache_gsds], "target": cfg.target,
        "classes": list(classes_for(cfg.target)),
        "mean": [round(float(m), 4) for m in mean], "std": [round(float(s), 4) for s in std],
        "config": cfg.model_dump(mode="json"), "sources": records,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    # numpy's stub lets **arrays reach allow_pickle: bool; every key here is a source's array name
    np.savez_compressed(tmp, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)  # type: ignore[arg-type]
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m fpn_geo.train.cache``: build a training cache from a config; the exit code."""
    from fpn_geo.errors import FpnGeoError
    from fpn_geo.train.config import load_train_config

    p = argparse.ArgumentParser(prog="python -m fpn_geo.train.cache", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="the .npz to write, e.g. runs/cache.npz")
    p.add_argument("--gsds", type=float, nargs="+", help="override cache_gsds, e.g. --gsds 0.3")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = load_train_config(a.config, cache_gsds=tuple(a.gsds) if a.gsds else None)
        out = prepare_cache(cfg, a.out)
    except FpnGeoError as e:
        print(f"cache: error: {e}", file=sys.stderr)
        return 2
    print(f"{out} {out.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
