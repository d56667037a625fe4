"""Validation: predict each held-out block on a grid, vectorize it as ``segment`` does, and score it.

Scores are pixel IoU of the footprint against the rasterized truth, and the SpaceNet building F1
(IoU >= 0.5) of the vectorized polygons, with and without contact-class separation.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import shapely
import torch

from fpn_geo.evaluate import building_f1, pixel_iou
from fpn_geo.scene import SceneInfo
from fpn_geo.separate import label_instances
from fpn_geo.train.dataset import ChipDataset, Source
from fpn_geo.train.samplers import Block, ChipQuery
from fpn_geo.tiling import Block as GridBlock
from fpn_geo.vectorize import connected_components, to_buildings, trace_pieces


@dataclass(frozen=True)
class BlockPrediction:
    """uint8 footprint (1 - P(background)) and contact probabilities over a held-out block."""

    source: Source
    block: Block
    footprint: np.ndarray
    contact: np.ndarray | None


@torch.no_grad()
def predict_block(
    model: torch.nn.Module, dataset: ChipDataset, queries: list[ChipQuery], source_index: int, device: torch.device, batch: int = 4
) -> BlockPrediction:
    """Run the grid chips of one source's block through the model and average overlapping chips."""
    source = dataset.sources[source_index]
    block = source.val_block
    qs = [q for q in queries if q.source == source_index]
    k = 2  # footprint, contact
    acc = np.zeros((k, block.height, block.width), np.float32)
    cnt = np.zeros((block.height, block.width), np.float32)
    model.eval()
    cuda = device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    for i in range(0, len(qs), batch):
        chunk = qs[i : i + batch]
        x = torch.stack([dataset[q]["image"] for q in chunk]).to(device)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp:
            p = model(x).float().softmax(dim=1)
        has_contact = p.shape[1] > 2
        fp = (1.0 - p[:, 0]).cpu().numpy()
        ct = p[:, 2].cpu().numpy() if has_contact else np.zeros_like(fp)
        for q, f, c in zip(chunk, fp, ct):
            r0, c0 = q.row - block.row0, q.col - block.col0
            r1, c1 = min(r0 + q.size, block.height), min(c0 + q.size, block.width)
            acc[0, r0:r1, c0:c1] += f[: r1 - r0, : c1 - c0]
            acc[1, r0:r1, c0:c1] += c[: r1 - r0, : c1 - c0]
            cnt[r0:r1, c0:c1] += 1
    probs = (acc / np.maximum(cnt, 1) * 255).round().astype(np.uint8)
    return BlockPrediction(source, block, probs[0], probs[1] if has_contact else None)


def block_scene(source: Source, block: Block) -> SceneInfo:
    """The held-out block described as a scene, so the pipeline's vectorizer can place its polygons."""
    t = source.transform * source.transform.translation(block.col0, block.row0)
    return SceneInfo("", block.width, block.height, len(source.image), str(source.image.dtype), source.crs_wkt, tuple(t)[:6], None, source.gsd_m)


def vectorize_block(pred: BlockPrediction, threshold: float, separate: bool, simplify_m: float, min_area_m2: float, utm=None) -> gpd.GeoDataFrame:
    """Polygons in the source CRS with ``area_m2``, as the pipeline writes them (one strip: the block is small)."""
    labeler = label_instances if separate and pred.contact is not None else connected_components
    info = block_scene(pred.source, pred.block)
    labels = labeler(pred.footprint, pred.contact, threshold)
    pieces = trace_pieces(labels, pred.footprint, GridBlock(0, 0, 0, info.height, 0, info.width))
    return to_buildings(pieces, info.georef(), simplify_m, min_area_m2)


def block_truth(source: Source, block: Block, min_area_m2: float = 0.0, utm=None) -> gpd.GeoDataFrame:
    """Truth polygons clipped to the block (buildings cut by the block edge count by their inside part), at least ``min_area_m2``."""
    info = block_scene(source, block)
    a = info.affine
    x0, y0 = a * (0, 0)
    x1, y1 = a * (block.width, block.height)
    box = shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    clipped = source.truth.clip(box)
    clipped = clipped[clipped.geom_type.isin(["Polygon", "MultiPolygon"])].explode(index_parts=False).reset_index(drop=True)
    if min_area_m2 > 0 and len(clipped):
        area = clipped.geometry.to_crs(utm if utm is not None else info.georef().utm).area
        clipped = clipped[area.to_numpy() >= min_area_m2].reset_index(drop=True)
    return clipped


def score_block(pred: BlockPrediction, threshold: float = 0.5, simplify_m: float = 0.2, min_area_m2: float = 4.0) -> dict[str, float]:
    """Pixel IoU and building F1 at IoU >= 0.5 (with and without separation) of one block.

    Both sides drop buildings under ``min_area_m2`` (true m², in the block's UTM zone) before matching.
    """
    truth_fp = pred.source.footprint[pred.block.slices]
    out: dict[str, float] = {"pixel_iou": pixel_iou(pred.footprint >= round(threshold * 255), truth_fp)}
    if pred.source.truth is None:
        return out
    utm = block_scene(pred.source, pred.block).georef().utm  # one pyproj lookup per block, not per call
    truth = block_truth(pred.source, pred.block, min_area_m2, utm)
    for separate, key in ((True, "sep"), (False, "nosep")):
        polys = vectorize_block(pred, threshold, separate, simplify_m, min_area_m2, utm)  # area filter applied here
        m = building_f1(polys, truth, iou=0.5, min_area_m2=0.0)
        out.update({f"f1_{key}": m["f1"], f"precision_{key}": m["precision"], f"recall_{key}": m["recall"], f"tp_{key}": m["TP"], f"fp_{key}": m["FP"], f"fn_{key}": m["FN"]})
    return out


def validate(model: torch.nn.Module, dataset: ChipDataset, queries: list[ChipQuery], device: torch.device, threshold: float, simplify_m: float, min_area_m2: float) -> dict[str, float]:
    """Scores of every held-out block, pooled: pixel IoU averaged by pixels, F1 from pooled TP/FP/FN."""
    results = []
    for i, s in enumerate(dataset.sources):
        if s.val_block is not None:
            pred = predict_block(model, dataset, queries, i, device)
            results.append((pred.block.height * pred.block.width, score_block(pred, threshold, simplify_m, min_area_m2)))
    n = sum(w for w, _ in results)
    out = {"val_pixel_iou": sum(w * r["pixel_iou"] for w, r in results) / n}
    for key in ("sep", "nosep"):
        rs = [r for _, r in results if f"tp_{key}" in r]
        if rs:
            tp, fp, fn = (sum(r[f"{k}_{key}"] for r in rs) for k in ("tp", "fp", "fn"))
            p = tp / (tp + fp) if tp + fp else 0.0
            rc = tp / (tp + fn) if tp + fn else 0.0
            out.update({f"val_f1_{key}": 2 * p * rc / (p + rc) if p * rc else 0.0, f"val_precision_{key}": p, f"val_recall_{key}": rc, f"val_tp_{key}": tp, f"val_fp_{key}": fp, f"val_fn_{key}": fn})
    return out
