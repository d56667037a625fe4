"""Vectorization, strip by strip: probability raster in, building polygons in the scene's CRS out.

Polygons are traced in pixel coordinates (exact integer vertices), so a building cut by a strip
edge is stitched back by joining the pieces that share a segment of that edge.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.features import shapes
from rasterio.windows import Window
from scipy import ndimage
from shapely.strtree import STRtree

from fpn_geo.scene import SceneInfo, local_utm
from fpn_geo.streaming import in_order

# Parts of one label smaller than this share of its largest part are dropped.
MIN_PART_SHARE = 0.25

# (footprint uint8, contact uint8 or None, threshold 0-1) -> int32 labels, 0 = background
Labeler = Callable[[np.ndarray, np.ndarray | None, float], np.ndarray]

# A strip holds at most this many pixels, whatever `strip_rows` asks: labelling takes ~30 bytes a
# pixel, so a 16k-wide scene gets 128-row strips and its memory stays that of a 2k-wide one.
STRIP_PIXELS = 2048 * 1024
MIN_STRIP_ROWS = 64
# Below this many pixels vectorizing takes about a second or less, which starting processes would not repay.
PROCESS_MIN_PIXELS = 16 * 2**20


def connected_components(footprint: np.ndarray, contact: np.ndarray | None, threshold: float) -> np.ndarray:
    """The plain labeler: 4-connected blobs above the threshold (touching buildings stay merged)."""
    labels, _ = ndimage.label(footprint >= round(threshold * 255))
    return labels.astype(np.int32)


@dataclass
class Piece:
    """A polygon in pixel coordinates with the sum of its probabilities, for the mean score after merging."""

    geom: shapely.Geometry
    psum: float
    count: float


def _polygons(labels: np.ndarray, mask: np.ndarray, y0: int) -> tuple[np.ndarray, np.ndarray]:
    """Trace every label into polygons (pixel coordinates, shifted down by y0): (geometries, label values).

    The rings GDAL traces are gathered into one coordinate array and built by shapely in one
    vectorized call: no Python work per vertex, little per polygon.
    """
    coords: list[list] = []
    ring_of: list[int] = []  # ring index per vertex
    poly_of: list[int] = []  # polygon index per ring
    values: list[int] = []
    for k, (geom, value) in enumerate(shapes(labels, mask=mask, connectivity=4, transform=Affine.translation(0, y0))):
        for ring in geom["coordinates"]:
            ring_of.extend([len(poly_of)] * len(ring))
            poly_of.append(k)
            coords.extend(ring)
        values.append(int(value))
    if not values:
        return np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
    rings = shapely.linearrings(np.asarray(coords, dtype=np.float64), indices=np.asarray(ring_of))
    return shapely.polygons(rings, indices=np.asarray(poly_of)), np.asarray(values, dtype=np.int64)


def strip_pieces(footprint: np.ndarray, contact: np.ndarray | None, y0: int, threshold: float, labeler: Labeler) -> list[Piece]:
    labels = labeler(footprint, contact, threshold)
    mask = labels > 0
    ids = labels[mask]
    if ids.size == 0:
        return []
    n = int(ids.max())
    psum = np.bincount(ids, weights=footprint[mask], minlength=n + 1)
    count = np.bincount(ids, minlength=n + 1).astype(np.float64)
    del ids
    geoms, values = _polygons(labels, mask, y0)
    area = shapely.area(geoms)
    largest = np.zeros(n + 1)
    np.maximum.at(largest, values, area)
    # A watershed label can leave 1-px islands apart from its body: not buildings.
    keep = np.flatnonzero(area >= MIN_PART_SHARE * largest[values])
    share = psum[values[keep]] / count[values[keep]]
    return [Piece(geoms[i], float(s * area[i]), float(area[i])) for i, s in zip(keep, share)]


def _bounds(pieces: list[Piece]) -> np.ndarray:
    """(n, 4) minx, miny, maxx, maxy of the pieces, in one vectorized call."""
    return shapely.bounds(np.array([p.geom for p in pieces], dtype=object))


def _shares_segment(a: shapely.Geometry, b: shapely.Geometry) -> bool:
    return a.intersection(b).length > 0


def join_across_cut(open_pieces: list[Piece], new_pieces: list[Piece], cut_y: float) -> tuple[list[Piece], list[Piece]]:
    """Merge new pieces touching the cut with open pieces touching it from above.

    Returns (finished open pieces that met nothing, new pieces with merges applied).
    """
    top = np.flatnonzero(_bounds(new_pieces)[:, 1] == cut_y).tolist() if new_pieces else []
    if not open_pieces or not top:
        return open_pieces, new_pieces
    parent = list(range(len(open_pieces) + len(new_pieces)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    tree = STRtree([p.geom for p in open_pieces])
    for j in top:
        for i in tree.query(new_pieces[j].geom, predicate="intersects"):
            if _shares_segment(open_pieces[i].geom, new_pieces[j].geom):
                parent[find(int(i))] = find(len(open_pieces) + j)
    groups: dict[int, list[Piece]] = {}
    for k, piece in enumerate(open_pieces + new_pieces):
        groups.setdefault(find(k), []).append(piece)
    finished, merged = [], []
    for root, members in groups.items():
        if len(members) == 1 and root < len(open_pieces):
            finished.append(members[0])
        elif len(members) == 1:
            merged.append(members[0])
        else:
            geom = shapely.union_all([m.geom for m in members])
            merged.append(Piece(geom, sum(m.psum for m in members), sum(m.count for m in members)))
    return finished, merged


def vectorize_workers(workers: int, height: int, width: int) -> int:
    """0 means auto: a process per core (up to 8) on rasters of PROCESS_MIN_PIXELS or more, else this process."""
    if workers > 0:
        return workers
    return max(1, min(8, os.cpu_count() or 1)) if height * width >= PROCESS_MIN_PIXELS else 1


@functools.lru_cache(maxsize=1)
def _process_pool(workers: int) -> ProcessPoolExecutor:
    """One pool per process, kept for its life: children start once, not once per scene.

    Children fork from a server that has imported only what vectorizing needs (never from the caller, which
    may hold torch's threads). Each still imports the caller's main module once, as multiprocessing does.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["fpn_geo.vectorize", "fpn_geo.separate"])
    else:
        ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx)
    atexit.register(pool.shutdown, wait=False, cancel_futures=True)
    return pool


def _strips(src, strip_rows: int, threshold: float, labeler: Labeler, workers: int) -> Iterator[tuple[int, int, list[Piece]]]:
    """(y0, y1, pieces) for every strip, in order. With workers > 1, strips are labelled and traced in that many
    processes, at most one strip per process ahead of the caller, so memory stays a few strips."""
    height, width = src.height, src.width

    def read():
        for y0 in range(0, height, strip_rows):
            y1 = min(height, y0 + strip_rows)
            win = Window(0, y0, width, y1 - y0)
            yield y0, y1, src.read(1, window=win), src.read(2, window=win) if src.count > 1 else None

    if workers <= 1:
        for y0, y1, footprint, contact in read():
            yield y0, y1, strip_pieces(footprint, contact, y0, threshold, labeler)
        return
    pool = _process_pool(workers)
    yield from in_order(lambda strip: pool.submit(_strip_job, *strip, threshold, labeler), read(), workers + 1)


def _strip_job(y0: int, y1: int, footprint, contact, threshold: float, labeler: Labeler) -> tuple[int, int, list[Piece]]:
    return y0, y1, strip_pieces(footprint, contact, y0, threshold, labeler)


def polygonize(
    path: str, threshold: float = 0.5, strip_rows: int = 1024, labeler: Labeler = connected_components,
    workers: int = 1,
) -> Iterator[list[Piece]]:
    """Yield finished pieces (pixel coordinates) strip after strip; band 1 footprint, band 2 contact if present.

    Strips are `strip_rows` high, or fewer on wide scenes (at most STRIP_PIXELS pixels a strip). With
    workers > 1, strips are vectorized in that many processes and joined here in order: the same pieces.
    """
    with rasterio.open(path) as src:
        height, width = src.height, src.width
        strip_rows = min(strip_rows, max(MIN_STRIP_ROWS, STRIP_PIXELS // width))
        open_pieces: list[Piece] = []
        for y0, y1, pieces in _strips(src, strip_rows, threshold, labeler, workers):
            finished, pieces = join_across_cut(open_pieces, pieces, y0)
            at_cut = (_bounds(pieces)[:, 3] == y1) & (y1 < height) if pieces else np.zeros(0, bool)
            open_pieces = [p for p, cut in zip(pieces, at_cut) if cut]
            finished += [p for p, cut in zip(pieces, at_cut) if not cut]
            if finished:
                yield finished
        if open_pieces:
            yield open_pieces


def local_metric_crs(info: SceneInfo):
    """The UTM zone at the scene's centre (the same one its GSD is measured in): where areas in m² are true."""
    return local_utm(info.affine, info.crs, info.width, info.height)


def to_buildings(pieces: list[Piece], info: SceneInfo, simplify_m: float, min_area_m2: float, utm=None) -> gpd.GeoDataFrame:
    """Pixel pieces -> valid polygons in the scene CRS, with score (mean probability) and area_m2."""
    if not pieces:
        return gpd.GeoDataFrame({"score": [], "area_m2": []}, geometry=[], crs=info.crs)
    geoms = np.array([p.geom for p in pieces], dtype=object)
    if simplify_m > 0:
        geoms = shapely.simplify(geoms, simplify_m / info.gsd_m, preserve_topology=True)
    a = info.affine
    geoms = shapely.transform(geoms, lambda xy: np.column_stack([a.a * xy[:, 0] + a.b * xy[:, 1] + a.c, a.d * xy[:, 0] + a.e * xy[:, 1] + a.f]))
    geoms = shapely.make_valid(geoms)
    score = np.array([p.psum / p.count / 255.0 if p.count else 0.0 for p in pieces], dtype=np.float32)
    gdf = gpd.GeoDataFrame({"score": score}, geometry=geoms, crs=info.crs)
    gdf = gdf.explode(index_parts=False)
    gdf = gdf[(gdf.geom_type == "Polygon") & ~gdf.is_empty & gdf.is_valid]
    # Repairing a ring that touches itself can split off a 1-px sliver: keep only substantial parts.
    area = gdf.area
    gdf = gdf[area >= MIN_PART_SHARE * area.groupby(level=0).transform("max")]
    gdf["area_m2"] = gdf.geometry.to_crs(utm if utm is not None else local_metric_crs(info)).area.astype(np.float32)
    return gdf[gdf["area_m2"] >= min_area_m2].reset_index(drop=True)
