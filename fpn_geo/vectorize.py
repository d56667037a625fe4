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
from fpn_geo.trace import corner_rings, polygons_of_corners

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


@dataclass
class Outlines:
    """A block's labels reduced to what its polygons need, wherever they were labelled (`block_outlines`, or
    `fpn_geo.trace_torch.block_outlines_torch` where the pixels are): arrays the size of the outlines, not of the block.

    With the background traced (for the coverage simplification), every 4-connected part of it is a label above
    `buildings`, numbered as `scipy.ndimage.label` numbers them, and `nodes` says where outlines meet.
    """

    corners: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # `fpn_geo.trace.corner_rings` of those labels
    shape: tuple[int, int]  # the block's labels, (h, w)
    buildings: int  # labels 1..buildings are buildings
    psum: np.ndarray  # (buildings + 1,) float64: each label's sum of footprint probabilities (uint8)
    count: np.ndarray  # (buildings + 1,) float64: each label's pixels
    nodes: tuple[np.ndarray, np.ndarray] | None  # `node_positions`; None: the background was not traced


def block_outlines(labels: np.ndarray, footprint: np.ndarray, with_background: bool) -> Outlines:
    """A block's labels (h, w) and footprint probabilities reduced to its `Outlines`, on the CPU."""
    mask = labels > 0
    ids = labels[mask]
    n = int(ids.max()) if ids.size else 0
    psum = np.bincount(ids, weights=footprint[mask], minlength=n + 1).astype(np.float64)
    count = np.bincount(ids, minlength=n + 1).astype(np.float64)
    del ids
    every, nodes = labels, None
    if n and with_background:
        from scipy import ndimage  # imported in the post worker, not before the model starts (pipeline)

        # The background traced too, each 4-connected part its own label above n: every pixel of the block is
        # in one polygon, and the coverage's outer boundary is the block's border.
        background, _ = ndimage.label(~mask)
        every = np.where(mask, labels, background + n)
        del background
        nodes = node_positions(meeting_points(np.pad(every, 1)))
    empty = np.empty(0, np.int64)
    corners = corner_rings(every) if n else (empty, empty, empty, empty)
    return Outlines(corners, labels.shape, n, psum, count, nodes)


def meeting_points(padded):
    """(h+1, w+1) bools, numpy or torch: the pixel corners of a zero-padded (h, w) label raster with no zeros where
    three or more values meet (the outside counts as one more value): at least two of the pixels around a corner
    differ from those before them."""
    a, b, c, d = padded[:-1, :-1], padded[:-1, 1:], padded[1:, :-1], padded[1:, 1:]
    b_new, c_new, d_new = b != a, (c != a) & (c != b), (d != a) & (d != b) & (d != c)
    return (b_new & c_new) | (b_new & d_new) | (c_new & d_new)


def node_positions(nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where a (h+1, w+1) node mask is set, as sorted y * (w+1) + x and as sorted x * (h+1) + y."""
    return np.flatnonzero(nodes), np.flatnonzero(nodes.T)


def trace_pieces(
    labels: np.ndarray,
    footprint: np.ndarray,
    block: Block,
    grid_hw: tuple[int, int] | None = None,
    simplify_px: float = 0.0,
) -> list[Piece]:
    """Every labelled region of a block as a polygon in grid coordinates, with its probability sum; outlines
    simplified by `simplify_px` (grid pixels) as one coverage (`simplify_coverage`), so neighbours never overlap."""
    return pieces_of(block_outlines(labels, footprint, simplify_px > 0), block, grid_hw, simplify_px)


def pieces_of(
    o: Outlines, block: Block, grid_hw: tuple[int, int] | None = None, simplify_px: float = 0.0
) -> list[Piece]:
    """A block's `Outlines` -> its pieces (`trace_pieces`); rings are cut at pinches and holes find their owners
    here, on the host. `simplify_px` applies when the outlines traced the background (`o.nodes`).

    A label in several parts keeps the parts of at least MIN_PART_SHARE of its largest, and every part that
    touches an edge with a neighbour behind it (it may be joined there).
    """
    if o.buildings == 0:
        return []
    n = o.buildings
    traced, values = polygons_of_corners(*o.corners, o.shape[1] + 1, block.x0, block.y0)
    if o.nodes is not None:
        h, w = o.shape
        geoms = simplify_coverage(traced, o.nodes, (h + 1, w + 1), (block.x0, block.y0), simplify_px)
        building = values <= n
        traced, geoms, values = traced[building], geoms[building], values[building]
    else:
        geoms = traced
    area = shapely.area(traced)  # pixels: what the probability sums were taken over
    largest = np.zeros(n + 1)
    np.maximum.at(largest, values, area)
    # A watershed label can leave 1-px islands apart from its body: not buildings.
    at_edge = _touches_neighbours(shapely.bounds(traced).reshape(-1, 4), block, grid_hw or o.shape)
    keep = np.flatnonzero((area >= MIN_PART_SHARE * largest[values]) | at_edge)
    share = o.psum[values[keep]] / o.count[values[keep]]
    at = frozenset([(block.row, block.col)])
    return [Piece(geoms[i], float(s * area[i]), float(area[i]), at) for i, s in zip(keep, share)]


def simplify_coverage(
    polygons: np.ndarray, nodes: tuple[np.ndarray, np.ndarray], shape: tuple[int, int], origin: tuple[int, int],
    tolerance: float,
) -> np.ndarray:
    """Simplify traced polygons that tile a block (its background included) as one coverage: each stretch of
    outline that two polygons share is simplified once, for both, so neighbours never overlap, and the block's
    border stays exactly where it is, so pieces cut by it still join their neighbours' exactly.

    GEOS's coverage simplifier (Visvalingam-Whyatt: a vertex goes when its triangle is under `tolerance`² in
    area, and no outline may cross another) needs every polygon to have a vertex wherever outlines meet. Traced
    rings keep only their corners, so each ring first gets the nodes (pixel corners where three or more
    polygons meet: `meeting_points`, at `node_positions` in a (h+1, w+1) `shape`) that lie along it
    (`_with_nodes`; `segmentize` would add every pixel corner, most only to be dropped again). `origin`: the
    block's (x0, y0) in the polygons' coordinates.
    """
    return shapely.coverage_simplify(
        _with_nodes(polygons, nodes, shape, origin), tolerance, simplify_boundary=False
    )


def _with_nodes(
    polygons: np.ndarray, nodes: tuple[np.ndarray, np.ndarray], shape: tuple[int, int], origin: tuple[int, int]
) -> np.ndarray:
    """Traced polygons with a vertex added at each node that lies inside one of their (axis-parallel) segments, in
    the direction the segment runs: nodes are found per segment by binary search in the sorted node positions,
    row by row for horizontal segments and column by column for vertical ones."""
    kind, xy, (ring_at, poly_at) = shapely.to_ragged_array(polygons)
    ix = xy.astype(np.int64) - np.asarray(origin)
    h1, w1 = shape
    a, b = ix[:-1], ix[1:]  # segment i runs from vertex i to vertex i + 1
    across = a[:, 1] == b[:, 1]  # horizontal; the others are vertical
    # y * w1 + x, and x * h1 + y, each with a sentinel past every key, so neither is empty
    in_rows, in_cols = np.r_[nodes[0], h1 * w1], np.r_[nodes[1], h1 * w1]
    lo, hi = np.minimum(a, b) + 1, np.maximum(a, b) - 1
    key_lo = np.where(across, a[:, 1] * w1 + lo[:, 0], a[:, 0] * h1 + lo[:, 1])
    key_hi = np.where(across, a[:, 1] * w1 + hi[:, 0], a[:, 0] * h1 + hi[:, 1])
    i0 = np.where(across, np.searchsorted(in_rows, key_lo, "left"), np.searchsorted(in_cols, key_lo, "left"))
    i1 = np.where(across, np.searchsorted(in_rows, key_hi, "right"), np.searchsorted(in_cols, key_hi, "right"))
    count = np.maximum(i1 - i0, 0)
    count[ring_at[1:-1] - 1] = 0  # a ring's closing vertex to the next ring's first is no segment
    count = np.r_[count, 0]
    first = np.r_[0, np.cumsum(1 + count)[:-1]]  # where each old vertex goes
    total = int(first[-1] + 1)
    out = np.empty((total, 2))
    out[first] = xy
    seg = np.repeat(np.arange(len(count)), count)
    rank = np.arange(len(seg)) - np.repeat(np.cumsum(count) - count, count)
    forward = (b - a).sum(axis=1)[seg] > 0
    at = np.where(forward, i0[seg] + rank, i1[seg] - 1 - rank)
    row = across[seg]
    # both sides are evaluated for every segment: clip the other orientation's positions
    key = np.where(row, in_rows[np.minimum(at, len(in_rows) - 1)], in_cols[np.minimum(at, len(in_cols) - 1)])
    x, y = np.where(row, key % w1, key // h1), np.where(row, key // w1, key % h1)
    out[first[seg] + 1 + rank] = np.column_stack([x + origin[0], y + origin[1]])
    return shapely.from_ragged_array(kind, out, (np.r_[first, total][ring_at], poly_at))


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


def to_buildings(
    pieces: list[Piece], georef: Georef, min_area_m2: float, rect_iou: float = 0.0
) -> gpd.GeoDataFrame:
    """Grid-pixel pieces (simplified in their blocks: `trace_pieces`) -> valid polygons in the grid's CRS, with
    score (mean probability) and true area_m2.

    rect_iou > 0: a building nearly a rectangle becomes its oriented minimum rectangle (`regularize`), in grid
    pixels, where right angles are right angles whatever the CRS.
    """
    if not pieces:
        return gpd.GeoDataFrame(
            {"score": np.zeros(0, np.float32), "area_m2": np.zeros(0, np.float32)}, geometry=[], crs=georef.crs
        )
    # Without the vertices that only cut a straight line: the pixel corners a block's border kept, and those a
    # join leaves on the seam. Removing them moves no outline.
    geoms = shapely.simplify(np.array([p.geom for p in pieces], dtype=object), 0.0, preserve_topology=False)
    geoms = shapely.normalize(geoms)
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


@dataclass(frozen=True)
class Buildings:
    """Finished buildings as plain arrays (WKB in the scene's CRS): a few bytes each when pickled, no CRS or frame."""

    wkb: list[bytes]
    score: np.ndarray  # float32
    area_m2: np.ndarray  # float32

    @classmethod
    def from_frame(cls, gdf: gpd.GeoDataFrame) -> Buildings:
        return cls(
            list(shapely.to_wkb(gdf.geometry.values)),
            gdf["score"].to_numpy(np.float32),
            gdf["area_m2"].to_numpy(np.float32),
        )

    def to_frame(self, crs) -> gpd.GeoDataFrame:
        return gpd.GeoDataFrame(
            {"score": self.score, "area_m2": self.area_m2}, geometry=shapely.from_wkb(self.wkb), crs=crs
        )
