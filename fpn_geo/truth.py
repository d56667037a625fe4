"""Training and evaluation labels from GIS files: read, reproject, repair, rasterize.

Read this module top to bottom: ``read_labels`` brings building polygons into the
scene's CRS, ``rasterize_instances`` burns one id per building, and
``rasterize_classes`` turns that into the 3-class target (background, building,
contact) that lets the model learn to separate buildings that touch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.features
import shapely
from affine import Affine
from pyproj import CRS
from scipy import ndimage

from fpn_geo.errors import ConfigError, InputError
from fpn_geo.geopackage import BUILDINGS

log = logging.getLogger(__name__)

BACKGROUND, BUILDING, CONTACT = 0, 1, 2
"""Class ids of the 3-class target written by ``rasterize_classes``."""
INTERIOR, SEPARATOR = 1, 2
"""Class ids of the separator target (``separator_target``): building interior, separator."""

_POLYGONAL = ("Polygon", "MultiPolygon")


@dataclass(frozen=True)
class RepairReport:
    """What ``repair_polygons`` changed, so a caller can log or test it."""

    repaired: int  # invalid geometries fixed by make_valid and kept
    dropped: int  # empty, non-polygonal, or left with no area after repair


def as_crs(crs: Any) -> CRS:
    """Turn a scene CRS into a pyproj CRS; accept what users hold (rasterio CRS, pyproj CRS, 'EPSG:4326', EPSG int)."""
    try:
        epsg = crs.to_epsg() if hasattr(crs, "to_epsg") else None
        if epsg is not None:
            return CRS.from_epsg(epsg)  # keeps "EPSG:32737" readable in logs and files
        return CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    except Exception as exc:  # pyproj raises several types
        raise InputError(
            f"Cannot read the target CRS {crs!r}; expected an EPSG code, WKT or a "
            f"rasterio/pyproj CRS. Pass e.g. crs=src.crs from the scene."
        ) from exc


def _polygonal_part(geom: shapely.Geometry | None) -> shapely.Geometry | None:
    """Keep only the areal part of a geometry: make_valid may return lines and points too."""
    if geom is None or geom.is_empty:
        return None
    if geom.geom_type in _POLYGONAL:
        return geom
    parts = [p for p in shapely.get_parts(geom) if p.geom_type in _POLYGONAL and not p.is_empty]
    if not parts:
        return None
    return shapely.union_all(parts) if len(parts) > 1 else parts[0]


def repair_polygons(gdf: gpd.GeoDataFrame) -> tuple[gpd.GeoDataFrame, RepairReport]:
    """Make every geometry a valid single Polygon; OSM-style labels often hold bow-ties.

    Invalid geometries go through ``shapely.make_valid`` and keep only their
    polygonal parts; multipolygons are exploded so one row is one building part;
    empty, non-areal and zero-area rows are dropped and counted.
    """
    geoms = shapely.force_2d(np.asarray(gdf.geometry.values, dtype=object))
    present = ~shapely.is_missing(geoms)
    invalid = present & ~shapely.is_valid(geoms)
    fixed = geoms.copy()
    fixed[invalid] = shapely.make_valid(geoms[invalid])
    kept = np.array([_polygonal_part(g) if ok else None for g, ok in zip(fixed, present)], dtype=object)
    keep_mask = ~shapely.is_missing(kept)
    keep_mask[keep_mask] = shapely.area(kept[keep_mask]) > 0
    out = gdf.loc[keep_mask].copy()
    out = out.set_geometry(gpd.GeoSeries(kept[keep_mask], index=out.index, crs=gdf.crs))
    out = out.explode(index_parts=False, ignore_index=True)
    parts = out.geometry.to_numpy()
    out = out[~shapely.is_empty(parts) & (shapely.area(parts) > 0)].reset_index(drop=True)
    report = RepairReport(repaired=int((invalid & keep_mask).sum()), dropped=int((~keep_mask).sum()))
    if report.repaired or report.dropped:
        log.info("labels: repaired %d invalid geometries, dropped %d", report.repaired, report.dropped)
    return out, report


def choose_layer(path: Path, layer: str | None = None) -> str | None:
    """The layer to read: the one asked for, the only one, BUILDINGS (our GeoPackages), or the only polygon layer.

    GeoPackages often hold several tables (ours: buildings, provenance); guessing silently would score the wrong one.
    """
    import pyogrio

    try:
        layers = pyogrio.list_layers(path)
    except Exception:
        return layer  # not readable as a vector dataset: read_file below says why
    names = [str(n) for n, _ in layers]
    if layer is not None:
        if layer not in names:
            raise InputError(f"Label file {str(path)!r} has no layer {layer!r}; its layers are {', '.join(names)}.")
        return layer
    if len(names) <= 1:
        return names[0] if names else None
    if BUILDINGS in names:
        return BUILDINGS
    polygons = [str(n) for n, g in layers if g and "POLYGON" in str(g).upper()]
    if len(polygons) == 1:
        return polygons[0]
    raise InputError(
        f"Label file {str(path)!r} has {len(names)} layers ({', '.join(names)}); name the one with the buildings "
        f"(fpn-geo evaluate --truth-layer / --pred-layer)."
    )


def read_labels(path: str | Path, crs: Any = None, layer: str | None = None) -> gpd.GeoDataFrame:
    """Read building polygons (GeoJSON, GPKG, Shapefile...) into the scene CRS ``crs``.

    Labels are reprojected because GIS files are usually in EPSG:4326 while
    scenes are in UTM or Web Mercator; burning lon/lat onto a metric grid puts
    every building in the wrong place. ``crs=None`` keeps the file's CRS.
    The repair counts are in ``gdf.attrs["repaired"]`` and ``gdf.attrs["dropped"]``, and the number of features
    the file held in ``gdf.attrs["features"]`` (a repaired bow-tie or a multipolygon gives a row per part).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"Label file {str(path)!r} does not exist; expected a vector file. Check the path.")
    layer = choose_layer(path, layer)
    try:
        gdf = gpd.read_file(path, engine="pyogrio", layer=layer)
    except Exception as exc:
        raise InputError(
            f"Cannot read labels from {str(path)!r} ({exc}); expected a GeoJSON, GeoPackage or "
            f"Shapefile. Open it in QGIS or ogrinfo to check it."
        ) from exc
    if gdf.crs is None:
        raise InputError(
            f"Label file {str(path)!r} has no CRS; expected one so the labels can be placed on "
            f"the scene. Assign it, e.g. `ogr2ogr -a_srs EPSG:4326 out.gpkg {path.name}`."
        )
    if crs is not None:
        target = as_crs(crs)
        if not gdf.crs.equals(target):
            gdf = gdf.to_crs(target)
    features = len(gdf)
    gdf, report = repair_polygons(gdf)
    gdf.attrs["repaired"] = report.repaired
    gdf.attrs["dropped"] = report.dropped
    gdf.attrs["features"] = features
    return gdf


def read_label_mask(path: str | Path, window: rasterio.windows.Window | None = None) -> tuple[np.ndarray, Affine, Any]:
    """Read a building mask raster (0/1 or 0/255) as a 0/1 uint8 array with its grid.

    Some datasets (SpaceNet masks) ship rasters instead of polygons; returning the
    window's own transform and CRS lets the caller check it matches the scene.
    """
    with rasterio.open(path) as src:
        band = src.read(1, window=window)
        transform = src.window_transform(window) if window is not None else src.transform
        crs = src.crs
    values = np.unique(band)
    if not set(values.tolist()) <= {0, 1, 255}:
        raise InputError(
            f"Mask {str(path)!r} holds values {values[:8].tolist()}; expected only 0/1 or 0/255. "
            f"Threshold it to a binary building mask first."
        )
    return (band > 0).astype(np.uint8), transform, crs


def _geometries(geoms: gpd.GeoDataFrame | gpd.GeoSeries | Iterable[shapely.Geometry]) -> list[shapely.Geometry]:
    """Accept a GeoDataFrame, GeoSeries or plain list, skip empty and missing geometries."""
    if isinstance(geoms, gpd.GeoDataFrame):
        geoms = geoms.geometry
    return [g for g in geoms if g is not None and not g.is_empty]


def rasterize_instances(
    geoms: gpd.GeoDataFrame | gpd.GeoSeries | Iterable[shapely.Geometry],
    transform: Affine,
    shape: tuple[int, int],
    all_touched: bool = False,
) -> np.ndarray:
    """Burn building i (in order) as id i+1 onto the grid; 0 is background.

    Geometries must already be in the grid's CRS (see ``read_labels``). Where
    polygons overlap, the later one wins.
    """
    if len(shape) != 2 or min(shape) <= 0:
        raise ConfigError(f"Raster shape {shape!r} is not (height, width) > 0; pass e.g. src.shape.")
    items = _geometries(geoms)
    if not items:
        return np.zeros(shape, dtype=np.int32)
    return rasterio.features.rasterize(
        ((g, i + 1) for i, g in enumerate(items)),
        out_shape=shape,
        transform=transform,
        fill=0,
        all_touched=all_touched,
        dtype="int32",
    )


def contact_from_instances(instances: np.ndarray, contact_px: int = 2) -> np.ndarray:
    """Mark pixels whose (2*contact_px+1)² square holds two or more different building ids.

    This is the thin band where buildings touch or nearly touch; a model trained to
    find it lets the vectorizer cut a merged blob back into separate buildings.
    """
    if isinstance(contact_px, bool) or not isinstance(contact_px, (int, np.integer)) or contact_px < 0:
        raise ConfigError(f"contact_px={contact_px!r}; expected an integer >= 0 (pixels). Pass e.g. contact_px=2.")
    if contact_px == 0:
        return np.zeros(instances.shape, dtype=bool)
    size = 2 * int(contact_px) + 1
    big = np.iinfo(np.int32).max
    highest = ndimage.maximum_filter(instances, size=size, mode="constant", cval=0)
    lowest = ndimage.minimum_filter(np.where(instances > 0, instances, big), size=size, mode="constant", cval=big)
    return lowest < highest  # equal for one id, big > 0 for none


def rasterize_classes(
    geoms: gpd.GeoDataFrame | gpd.GeoSeries | Iterable[shapely.Geometry],
    transform: Affine,
    shape: tuple[int, int],
    contact_px: int = 2,
) -> np.ndarray:
    """3-class uint8 target: 0 background, 1 building, 2 contact between different buildings.

    Contact overrides building and background, so the gap between two close
    buildings and their facing edges both read 2.
    """
    instances = rasterize_instances(geoms, transform, shape)
    classes = (instances > 0).astype(np.uint8) * BUILDING
    classes[contact_from_instances(instances, contact_px)] = CONTACT
    return classes


def inner_border(instances: np.ndarray) -> np.ndarray:
    """Building pixels with a 4-neighbour of another id (background or another building): the 1-px inner border."""
    pad = np.pad(instances, 1, mode="edge")
    c = pad[1:-1, 1:-1]
    differs = (pad[:-2, 1:-1] != c) | (pad[2:, 1:-1] != c) | (pad[1:-1, :-2] != c) | (pad[1:-1, 2:] != c)
    return (instances > 0) & differs


def separator_target(instances: np.ndarray, gap_px: int = 2) -> np.ndarray:
    """3-class uint8 target from instance ids: 0 background, 1 building interior, 2 separator.

    The separator is the 1-px inner border of every building plus the background pixels within
    ``gap_px`` of two different buildings. Trained with a higher weight, it lets the product's watershed
    (``fpn_geo.instances.label_instances``) cut touching and nearly touching buildings apart; the
    footprint (1 - P(background)) is still the whole building.
    """
    target = (instances > 0).astype(np.uint8) * INTERIOR
    target[inner_border(instances)] = SEPARATOR
    if gap_px > 0:
        target[(instances == 0) & contact_from_instances(instances.astype(np.int32), gap_px)] = SEPARATOR
    return target
