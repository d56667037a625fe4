"""The naive pipeline a user would write by hand: the yardstick for fpn-geo's speed and memory.

Kept deliberately honest and simple:
- the same window grid (size, overlap) as fpn-geo, read with rasterio one window at a time;
- the model run with batch 1 (float32 on CPU), or the same oracle "model";
- each prediction written into a full-scene float32 NumPy array (later windows overwrite the overlap);
- pixels under nodata zeroed (a user who knows the scene has nodata does that much);
- threshold, `rasterio.features.shapes` on the whole mask, `GeoDataFrame.to_file` to a GeoPackage.

Buildings below `min_area_m2` are dropped using the CRS's own area units (what a user would do).
No contact class: touching buildings stay merged.
"""

from __future__ import annotations

import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.features
import shapely
import torch

from fpn_geo.tiling import make_grid


def torch_predictor(checkpoint: str | Path):
    """Batch-1 float32 forward of a checkpoint: P(building footprint) = 1 - P(background), uint8."""
    from fpn_geo.model.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    mean = torch.tensor(meta.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(meta.std, dtype=torch.float32).view(1, -1, 1, 1)

    @torch.inference_mode()
    def predict(image: np.ndarray, window) -> np.ndarray:
        x = (torch.from_numpy(image[None].astype(np.float32)) - mean) / std
        p = model(x).softmax(dim=1)
        return ((1.0 - p[0, 0]) * 255).round().to(torch.uint8).numpy()

    return predict, meta.bands


def oracle_predictor(oracle):
    """The fpn-geo OraclePredictor called one window at a time; footprint channel only."""

    def predict(image: np.ndarray, window) -> np.ndarray:
        return oracle(image[None], [window])[0, 0]

    return predict


def run_baseline(scene: str, predict, bands, out: str | Path, window: int = 512, overlap: int = 64,
                 threshold: float = 0.5, min_area_m2: float = 4.0) -> dict:
    t0 = time.perf_counter()
    times = {}
    with rasterio.open(scene) as src:
        H, W = src.height, src.width
        grid = make_grid(H, W, window, overlap)
        prob = np.zeros((H, W), dtype=np.float32)  # the whole scene in RAM
        tr = tm = 0.0
        for w in grid:
            a = time.perf_counter()
            win = w.clipped(H, W)
            h, ww = int(win.height), int(win.width)
            image = src.read(list(bands), window=win, boundless=False)
            valid = src.read_masks(1, window=win) > 0
            image = np.pad(image, ((0, 0), (0, window - h), (0, window - ww)), mode="symmetric")
            b = time.perf_counter()
            p = predict(image, w)[:h, :ww]
            tm += time.perf_counter() - b
            tr += b - a
            prob[w.row_off : w.row_off + h, w.col_off : w.col_off + ww] = np.where(valid, p, 0) / 255.0
        times["read"], times["model"] = tr, tm
        transform, crs = src.transform, src.crs
    a = time.perf_counter()
    mask = (prob >= threshold).astype(np.uint8)
    del prob
    geoms = [
        shapely.geometry.shape(g)
        for g, v in rasterio.features.shapes(mask, mask=mask > 0, transform=transform)
        if v == 1
    ]
    gdf = gpd.GeoDataFrame(geometry=geoms, crs=crs)
    gdf = gdf[gdf.area >= min_area_m2].reset_index(drop=True)
    gdf["id"] = np.arange(len(gdf))
    times["vectorize"] = time.perf_counter() - a
    a = time.perf_counter()
    gdf.to_file(out, layer="buildings", driver="GPKG")
    times["write"] = time.perf_counter() - a
    return {"buildings": len(gdf), "seconds": time.perf_counter() - t0, "times": times, "windows": len(grid)}
