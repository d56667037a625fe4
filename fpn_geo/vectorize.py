"""Vectorization on the model's grid: a block's labels in, building polygons out, edge pieces joined across blocks.

Polygons are traced in grid pixel coordinates (exact integer vertices). A building cut by a block edge comes out
of each block as an edge piece; pieces from different blocks that share a segment of a block edge are one
building, joined here row of blocks by row of blocks, so only one row's edge pieces are ever held.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from shapely.strtree import STRtree

from fpn_geo.georef import Georef
from fpn_geo.regularize import regularize
from fpn_geo.tiling import Block
from fpn_geo.trace import trace_labels

# Parts of one label smaller than this share of its largest part are dropped.
MIN_PART_SHARE = 0.25

@dataclass
class Piece:
    """A polygon in grid pixel coordinates with the sum of its probabilities, for the mean score after joining.

    `blocks` holds the (row, col) of the blocks it came from: pieces of one block never join each other.
    """

    geom: shapely.Geometry
    psum: float
    count: float
    blocks: frozenset = frozenset()


def trace_pieces(
    labels: np.ndarray, footprint: np.ndarray, block: Block, grid_hw: tuple[int, int] | None = None
) -> list[Piece]:
    """Every labelled region of a block as a polygon in grid coordinates, with its probability sum.

    A label in several parts keeps the parts of at least MIN_PART_SHARE of its largest, and every part that
    touches an edge with a neighbour behind it (it may be joined there).
    """
    mask = labels > 0
    ids = labels[mask]
    if ids.size == 0:
        return []
    n = int(ids.max())
    psum = np.bincount(ids, weights=footprint[mask], minlength=n + 1)
    count = np.bincount(ids, minlength=n + 1).astype(np.float64)
    del ids
    geoms, values = trace_labels(labels, block.x0, block.y0)
    area = shapely.area(geoms)
    largest = np.zeros(n + 1)
    np.maximum.at(largest, values, area)
    # A watershed label can leave 1-px islands apart from its body: not buildings.
    at_edge = _touches_neighbours(shapely.bounds(geoms).reshape(-1, 4), block, grid_hw or labels.shape)
    keep = np.flatnonzero((area >= MIN_PART_SHARE * largest[values]) | at_edge)
    share = psum[values[keep]] / count[values[keep]]
    at = frozenset([(block.row, block.col)])
    return [Piece(geoms[i], float(s * area[i]), float(area[i]), at) for i, s in zip(keep, share)]


def _bounds(pieces: list[Piece]) -> np.ndarray:
    """(n, 4) minx, miny, maxx, maxy of the pieces, in one vectorized call."""
    return shapely.bounds(np.array([p.geom for p in pieces], dtype=object)).reshape(-1, 4)


def _touches_neighbours(b: np.ndarray, block: Block, grid_hw: tuple[int, int]) -> np.ndarray:
    """For (n, 4) bounds: does each touch a side of the block that another block lies behind?"""
    h, w = grid_hw
    return (
        ((b[:, 0] == block.x0) & (block.x0 > 0)) | ((b[:, 2] == block.x1) & (block.x1 < w))
        | ((b[:, 1] == block.y0) & (block.y0 > 0)) | ((b[:, 3] == block.y1) & (block.y1 < h))
    )


def split_at_edges(pieces: list[Piece], block: Block, grid_hw: tuple[int, int]) -> tuple[list[Piece], list[Piece]]:
    """(finished, edge pieces): an edge piece touches a side of the block that another block lies behind."""
    if not pieces:
        return [], []
    edge = _touches_neighbours(_bounds(pieces), block, grid_hw)
    return [p for p, e in zip(pieces, edge) if not e], [p for p, e in zip(pieces, edge) if e]


def join_pieces(pieces: list[Piece]) -> list[Piece]:
    """One piece per building: pieces from different blocks that share a segment of a block edge are joined.

    The labeler's splits are kept: two pieces of one block that touch each other (a watershed split them) never
    end up in one building, even through a piece of the next block that touches both; that piece joins the one
    it shares the longest edge with. Joins are made longest shared edge first, so the result does not depend on
    the order of the pieces.
    """
    if len(pieces) < 2:
        return pieces
    tree = STRtree([p.geom for p in pieces])
    left, right = tree.query([p.geom for p in pieces], predicate="intersects")
    links, split = [], set()
    for i, j in zip(left.tolist(), right.tolist()):
        if i >= j:
            continue
        shared = pieces[i].geom.intersection(pieces[j].geom).length
        if shared <= 0:
            continue
        if pieces[i].blocks & pieces[j].blocks:
            split.add((i, j))  # neighbours in one block: the labeler kept them apart
        else:
            links.append((-shared, i, j))
    group = list(range(len(pieces)))
    members: dict[int, list[int]] = {k: [k] for k in range(len(pieces))}
    for _, i, j in sorted(links):
        gi, gj = group[i], group[j]
        if gi == gj or any((min(a, b), max(a, b)) in split for a in members[gi] for b in members[gj]):
            continue
        for k in members[gj]:
            group[k] = gi
        members[gi] += members.pop(gj)
    out = []
    for g in sorted(members, key=lambda g: min(members[g])):  # in the order of their first piece: deterministic
        parts = [pieces[k] for k in sorted(members[g])]
        if len(parts) == 1:
            out.append(parts[0])
        else:
            geom = shapely.union_all([m.geom for m in parts])
            blocks = frozenset().union(*(m.blocks for m in parts))
            out.append(Piece(geom, sum(m.psum for m in parts), sum(m.count for m in parts), blocks))
    return out


class EdgeJoiner:
    """Joins edge pieces row of blocks by row of blocks; holds the open pieces of one row, whatever the scene size."""

    def __init__(self, grid_hw: tuple[int, int]) -> None:
        self.height = grid_hw[0]
        self.open: list[Piece] = []

    def add_row(self, pieces: Iterable[Piece], row_bottom: int) -> list[Piece]:
        """Edge pieces of every block of one row (in block order); returns the buildings now complete."""
        joined = join_pieces(self.open + list(pieces))
        at_cut = (_bounds(joined)[:, 3] == row_bottom) & (row_bottom < self.height) if joined else np.zeros(0, bool)
        self.open = [p for p, cut in zip(joined, at_cut) if cut]
        return [p for p, cut in zip(joined, at_cut) if not cut]

    def finish(self) -> list[Piece]:
        done, self.open = self.open, []
        return done


def simplify(geoms: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker, and GEOS's topology-preserving simplifier only for the outlines it empties or breaks.

    The topology-preserving simplifier is 10x slower (0.89 s against 0.08 s on 22,176 traced outlines). On those
    outlines plain Douglas-Peucker emptied 3,850 slivers of at most 17 px and broke none; for the 17,558 of them at
    least 4 m² the two agree to IoU >= 0.968 and fit the traced outline equally well (mean IoU 0.945).
    """
    out = shapely.simplify(geoms, tolerance, preserve_topology=False)
    bad = shapely.is_empty(out) | ~shapely.is_valid(out)
    if bad.any():
        out[bad] = shapely.simplify(geoms[bad], tolerance, preserve_topology=True)
    return out


def to_buildings(
    pieces: list[Piece], georef: Georef, simplify_m: float, min_area_m2: float, rect_iou: float = 0.0
) -> gpd.GeoDataFrame:
    """Grid-pixel pieces -> valid polygons in the grid's CRS, with score (mean probability) and true area_m2.

    rect_iou > 0: a building nearly a rectangle becomes its oriented minimum rectangle (`regularize`), in grid
    pixels, where right angles are right angles whatever the CRS.
    """
    if not pieces:
        return gpd.GeoDataFrame(
            {"score": np.zeros(0, np.float32), "area_m2": np.zeros(0, np.float32)}, geometry=[], crs=georef.crs
        )
    # One vertex order whatever the pieces were joined from (Douglas-Peucker's result depends on where a ring
    # starts), without the collinear vertices a join leaves on the seam.
    geoms = shapely.normalize(simplify(np.array([p.geom for p in pieces], dtype=object), 0.0))
    if simplify_m > 0:
        geoms = simplify(geoms, simplify_m / georef.gsd_m)
    if rect_iou > 0:
        geoms = regularize(geoms, rect_iou)
    a = georef.affine
    geoms = shapely.transform(
        geoms,
        lambda xy: np.column_stack([a.a * xy[:, 0] + a.b * xy[:, 1] + a.c, a.d * xy[:, 0] + a.e * xy[:, 1] + a.f]),
    )
    geoms = shapely.make_valid(geoms)
    score = np.array([p.psum / p.count / 255.0 if p.count else 0.0 for p in pieces], dtype=np.float32)
    gdf = gpd.GeoDataFrame({"score": score}, geometry=geoms, crs=georef.crs)
    gdf = gdf.explode(index_parts=False)
    gdf = gdf[(gdf.geom_type == "Polygon") & ~gdf.is_empty & gdf.is_valid]
    # Repairing a ring that touches itself can split off a 1-px sliver: keep only substantial parts.
    area = pd.Series(shapely.area(gdf.geometry.values), index=gdf.index)  # shares of one building: any CRS will do
    gdf = gdf[area >= MIN_PART_SHARE * area.groupby(level=0).transform("max")]
    gdf["area_m2"] = gdf.geometry.to_crs(georef.utm).area.astype(np.float32)
    return gdf[gdf["area_m2"] >= min_area_m2].reset_index(drop=True)
