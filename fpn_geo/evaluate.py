"""Evaluation: the SpaceNet building metric on polygons, and pixel IoU on a raster grid.

``building_f1`` reproduces solaris' ``Evaluator.eval_iou`` (greedy one-to-one
matching at IoU >= 0.5); ``evaluate`` reads files and returns a JSON-able report.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from shapely import STRtree

from fpn_geo.errors import ConfigError, InputError
from fpn_geo.georef import bounds_utm
from fpn_geo.truth import as_crs, rasterize_instances, read_labels

log = logging.getLogger(__name__)


def areas_m2(gdf: gpd.GeoDataFrame) -> np.ndarray:
    """Polygon areas in m², measured in the UTM zone at the polygons' centre, as the product measures ``area_m2``.

    Areas in degrees² (EPSG:4326) or inflated Web Mercator metres would make a
    minimum-area filter mean different things in different cities.
    """
    if len(gdf) == 0:
        return np.zeros(0)
    if gdf.crs is None:
        raise InputError(
            "Polygons have no CRS; expected one to measure areas in m². "
            "Set it with gdf.set_crs(...) or pass min_area_m2=0."
        )
    return gdf.to_crs(bounds_utm(gdf.crs, gdf.total_bounds)).geometry.area.to_numpy()


def _valid(geoms: np.ndarray) -> np.ndarray:
    """Repair invalid polygons so GEOS overlay does not raise mid-evaluation."""
    geoms = geoms.copy()
    bad = ~shapely.is_valid(geoms)
    geoms[bad] = shapely.make_valid(geoms[bad])
    return geoms


def _present(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Drop missing and empty geometries: they can match nothing and would count as FP/FN."""
    geoms = gdf.geometry.to_numpy()
    return gdf[~shapely.is_missing(geoms) & ~shapely.is_empty(geoms)]


def _prediction_order(pred: gpd.GeoDataFrame) -> np.ndarray:
    """Most confident first when a ``score`` column exists; file order otherwise (solaris)."""
    if "score" in pred.columns:
        return np.argsort(-pred["score"].to_numpy(dtype=float), kind="stable")
    return np.arange(len(pred))


def _scores(tp: int, fp: int, fn: int) -> dict[str, float | int]:
    """Precision, recall and F1 with 0 (not NaN) on empty sets, so the report stays valid JSON."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision * recall > 0 else 0.0
    return {"TP": tp, "FP": fp, "FN": fn, "precision": precision, "recall": recall, "f1": f1}


def match_buildings(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matches (pred index, truth index, IoU) in the given prediction order.

    Each prediction takes the still-unmatched truth polygon with the highest IoU,
    if that IoU reaches ``iou``; this is the SpaceNet rule.
    """
    tree = STRtree(truth)
    free = np.ones(len(truth), dtype=bool)
    matches = []
    for i, poly in enumerate(pred):
        cand = tree.query(poly, predicate="intersects")
        cand = cand[free[cand]]
        if len(cand) == 0:
            continue
        inter = shapely.area(shapely.intersection(poly, truth[cand]))
        union = shapely.area(shapely.union(poly, truth[cand]))
        ious = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        best = int(np.argmax(ious))
        if ious[best] >= iou:
            free[cand[best]] = False
            matches.append((i, int(cand[best]), float(ious[best])))
    return matches


def building_f1(
    pred: gpd.GeoDataFrame, truth: gpd.GeoDataFrame, iou: float = 0.5, min_area_m2: float = 0.0
) -> dict[str, float | int]:
    """SpaceNet building metric: TP, FP, FN, precision, recall, f1 at IoU >= ``iou``.

    ``pred`` is reprojected to ``truth``'s CRS. Polygons smaller than
    ``min_area_m2`` are removed from both sides first (SpaceNet challenges used
    20 m²; solaris' published test values use no filter, i.e. 0).
    """
    if not 0.0 < iou <= 1.0:
        raise ConfigError(f"iou={iou!r}; expected a threshold in (0, 1]. SpaceNet uses iou=0.5.")
    if min_area_m2 < 0:
        raise ConfigError(f"min_area_m2={min_area_m2!r}; expected >= 0. Pass 0 for no filter or 20 for SpaceNet.")
    if (pred.crs is None) != (truth.crs is None):
        raise InputError(
            f"Only one side has a CRS (pred: {pred.crs}, truth: {truth.crs}); expected both or neither. "
            f"Set the missing one with gdf.set_crs(...)."
        )
    if pred.crs is not None and len(pred) and not pred.crs.equals(truth.crs):
        pred = pred.to_crs(truth.crs)
    pred, truth = _present(pred), _present(truth)
    if min_area_m2 > 0:
        pred = pred[areas_m2(pred) >= min_area_m2] if len(pred) else pred
        truth = truth[areas_m2(truth) >= min_area_m2] if len(truth) else truth
    pred_geoms = _valid(pred.geometry.to_numpy()[_prediction_order(pred)])
    truth_geoms = _valid(truth.geometry.to_numpy())
    tp = len(match_buildings(pred_geoms, truth_geoms, iou)) if len(pred_geoms) and len(truth_geoms) else 0
    return _scores(tp, len(pred_geoms) - tp, len(truth_geoms) - tp)


def pixel_iou(pred_mask: np.ndarray, truth_mask: np.ndarray) -> float:
    """Foreground IoU of two masks; 1.0 when both are empty (nothing to find, nothing found)."""
    if pred_mask.shape != truth_mask.shape:
        raise InputError(
            f"pred_mask has shape {pred_mask.shape}; expected truth_mask's shape {truth_mask.shape}. "
            f"Rasterize both onto the same grid with mask_on_grid()."
        )
    p, t = pred_mask.astype(bool), truth_mask.astype(bool)
    union = int(np.count_nonzero(p | t))
    return 1.0 if union == 0 else int(np.count_nonzero(p & t)) / union


def mask_on_grid(gdf: gpd.GeoDataFrame, transform: Affine, shape: tuple[int, int], crs: Any) -> np.ndarray:
    """Boolean building mask of ``gdf`` on a raster grid, reprojecting to the grid's CRS first."""
    if gdf.crs is None:
        raise InputError("Polygons have no CRS; expected one to place them on the raster. Use gdf.set_crs(...).")
    if len(gdf) and crs is not None and not gdf.crs.equals(as_crs(crs)):
        gdf = gdf.to_crs(as_crs(crs))
    return rasterize_instances(gdf, transform, shape) > 0


def repair_note(gdf: gpd.GeoDataFrame) -> str | None:
    """What `read_labels` changed on the way in, in one sentence; None when every feature became one building."""
    features, repaired, dropped = gdf.attrs["features"], gdf.attrs["repaired"], gdf.attrs["dropped"]
    if not repaired and not dropped and len(gdf) == features:
        return None
    extra = len(gdf) - (features - dropped)  # rows added by splitting a feature into its parts
    return (
        f"{features} features scored as {len(gdf)} buildings: {repaired} invalid (e.g. self-intersecting) repaired, "
        f"{dropped} dropped (not polygons, empty or no area), {extra} more from features split into their parts; "
        "fix the file (QGIS: Vector > Geometry > Check Validity) to score it as drawn"
    )


def evaluate(
    pred_path: str | Path,
    truth_path: str | Path,
    raster_path: str | Path | None = None,
    iou: float = 0.5,
    min_area_m2: float = 0.0,
    pred_layer: str | None = None,
    truth_layer: str | None = None,
) -> dict[str, Any]:
    """Read prediction and truth files and return a JSON-able report.

    The building metric is computed in the truth's CRS; if ``raster_path`` is
    given, both sides are also rasterized on its grid for pixel IoU. Both files
    go through ``read_labels``, so invalid polygons are repaired and
    multipolygons count as one building per part.
    """
    truth = read_labels(truth_path, layer=truth_layer)
    if len(truth) == 0:
        n = truth.attrs["features"]
        raise InputError(
            f"truth {str(truth_path)!r} holds no building polygons ({n} feature{'s' if n != 1 else ''}"
            f"{', none of them a polygon with an area' if n else ''}); evaluate needs the true building outlines "
            "(Polygon or MultiPolygon)"
        )
    pred = read_labels(pred_path, truth.crs, layer=pred_layer)
    for side, gdf, path in (("truth", truth, truth_path), ("prediction", pred, pred_path)):
        if note := repair_note(gdf):
            log.warning("%s %s: %s", side, Path(path).name, note)
    report: dict[str, Any] = {
        "pred": str(pred_path),
        "truth": str(truth_path),
        "crs": truth.crs.to_string(),
        "iou_threshold": iou,
        "min_area_m2": min_area_m2,
        "n_pred": len(pred),
        "n_truth": len(truth),
        "repaired": {"pred": pred.attrs["repaired"], "truth": truth.attrs["repaired"]},
        "dropped": {"pred": pred.attrs["dropped"], "truth": truth.attrs["dropped"]},
        "features": {"pred": pred.attrs["features"], "truth": truth.attrs["features"]},
        "building": building_f1(pred, truth, iou=iou, min_area_m2=min_area_m2),
    }
    if raster_path is not None:
        with rasterio.open(raster_path) as src:
            transform, shape, crs = src.transform, src.shape, src.crs
        if crs is None:
            raise InputError(
                f"Raster {str(raster_path)!r} has no CRS; expected a georeferenced grid. "
                f"Assign one with `gdal_edit.py -a_srs EPSG:xxxx`."
            )
        report["raster"] = str(raster_path)
        report["pixel_iou"] = pixel_iou(
            mask_on_grid(pred, transform, shape, crs), mask_on_grid(truth, transform, shape, crs)
        )
    return report
