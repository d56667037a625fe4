"""A label raster's outlines as polygons, traced with whole-array numpy steps: what GDAL's polygonize gives with
4-connectivity (the same polygons), without its pixel-by-pixel scan and without holding the GIL for it.

Each boundary between two pixels of different value is a unit edge, directed so that the labelled pixel lies on
its right (image coordinates, y down). At every vertex the next edge of the same label is found from the 2x2
pixels around it: turn right around the pixel in hand when the pixel ahead-right is not the label, else go straight
when the one ahead-left is not, else turn left. Turning right at a saddle keeps diagonal pixels apart, which is
4-connectivity. The edges then form closed rings; only the corners are kept. Outer rings run one way round and
holes the other, so the sign of a ring's area says which it is; each hole belongs to the smallest outer ring of its
label that covers it.
"""

from __future__ import annotations

import numpy as np
import shapely

RIGHT, DOWN, LEFT, UP = range(4)  # directions; the labelled pixel is on an edge's right
_STEP = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])  # (dx, dy) per direction


def _edges(padded: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per direction, in raster order of their start vertex: start x, start y and label of every unit edge.

    Pixels are compared along the flattened padded raster (one contiguous pass each way): the zero border keeps
    the comparison of a row's end with the next row's start from ever finding an edge.
    """
    w2 = padded.shape[1]
    flat = padded.ravel()
    found: dict[int, tuple] = {}
    for step, (first, second) in ((w2, (LEFT, RIGHT)), (1, (DOWN, UP))):
        f = np.flatnonzero(flat[:-step] != flat[step:])
        a, b = flat[f], flat[f + step]  # above and below, or left and right
        r, c = np.divmod(f, w2)
        if step == 1:  # vertical boundary x = c between columns c-1 and c: down with a, up with b
            found[first], found[second] = (c, r - 1, a), (c, r, b)
        else:  # horizontal boundary y = r between rows r-1 and r: left with a, right with b
            found[first], found[second] = (c, r, a), (c - 1, r, b)
    xs, ys, labels = [], [], []
    for d in range(4):
        x, y, lab = found[d]
        keep = lab > 0
        xs.append(x[keep])
        ys.append(y[keep])
        labels.append(lab[keep])
    return xs, ys, labels


def _ahead(w2: int) -> tuple[np.ndarray, np.ndarray]:
    """Per direction: offsets, in the flattened padded raster (w2 wide), from the pixel north-west of a vertex to
    the pixels ahead-right and ahead-left of an edge going that way into the vertex."""
    nw, ne, sw, se = 0, 1, w2, w2 + 1
    return np.array([se, sw, nw, ne]), np.array([ne, se, sw, nw])


def _next_direction(padded: np.ndarray, x: np.ndarray, y: np.ndarray, d: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """The direction of the edge after each edge that ends at vertex (x, y), going in direction d."""
    w2 = padded.shape[1]
    flat = padded.ravel()
    base = y * w2 + x  # the pixel north-west of vertex (x, y): row y-1, column x-1, in the padded raster
    right, left = _ahead(w2)
    turn = np.where(flat[base + right[d]] != lab, 1, np.where(flat[base + left[d]] != lab, 0, 3))
    return (d + turn) % 4


def _cycles(nxt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a permutation made of cycles: each element's cycle (its smallest member) and its place after it."""
    n = len(nxt)
    head = np.arange(n)
    jump = nxt.copy()
    while True:  # pointer doubling: after k rounds, the minimum over 2^k steps; unchanged: the whole cycle's
        new = np.minimum(head, head[jump])
        if np.array_equal(new, head):
            break
        head, jump = new, jump[jump]
    # Place along the cycle: cut it before its head and count the steps to the cut (list ranking).
    idx = np.arange(n)
    last = nxt[idx] == head  # the member whose successor is the head ends the cut list
    to_end = np.where(last, 0, 1)
    jump = np.where(last, idx, nxt)
    while not np.array_equal(jump[jump], jump):
        to_end = to_end + to_end[jump]
        jump = jump[jump]
    size = np.bincount(head, minlength=n)[head]
    return head, size - 1 - to_end


def trace_labels(labels: np.ndarray, x0: int = 0, y0: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Every 4-connected region of each label > 0 as a polygon with its holes, in pixel-corner coordinates offset
    by (x0, y0): (polygons, their label values), in raster order of their top-left corner."""
    return polygons_of_corners(*corner_rings(labels), labels.shape[1] + 1, x0, y0)


def corner_rings(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every ring's corners, ring after ring in ring order: their x, y (pixel corners), label, and ring id.
    `fpn_geo.trace_torch` computes the same four arrays where the labels are."""
    padded = np.pad(labels, 1)
    x, y, lab, succ, turns = _linked_edges(padded, labels.shape[1] + 1)
    if len(x) == 0:
        return x, y, lab, x
    ids, ring = _corner_rings(succ, turns)
    return x[ids], y[ids], lab[ids], ring


def polygons_of_corners(
    cx: np.ndarray, cy: np.ndarray, clab: np.ndarray, ring: np.ndarray, w1: int, x0: int = 0, y0: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`corner_rings` -> (polygons, their label values), offset by (x0, y0); w1: vertices per row (width + 1).
    Rings pinched at a vertex are cut there and holes find their outer ring: rare cases, kept on the host."""
    if len(cx) == 0:
        return np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
    flat, counts = _rings(cx, cy, ring, w1)
    return _polygons(cx[flat] + x0, cy[flat] + y0, clab[flat], counts)


def _linked_edges(padded: np.ndarray, w1: int) -> tuple[np.ndarray, ...]:
    """Every unit edge's start x, y, label, the index of the edge after it and whether it turns there."""
    xs, ys, labs = _edges(padded)
    vids = [y * w1 + x for x, y in zip(xs, ys)]  # each sorted: the edges come in raster order
    sizes = [len(v) for v in vids]
    offset = np.concatenate([[0], np.cumsum(sizes)])
    x, y, lab = np.concatenate(xs), np.concatenate(ys), np.concatenate(labs)
    d = np.repeat(np.arange(4), sizes)
    ex, ey = x + _STEP[d, 0], y + _STEP[d, 1]
    nd = _next_direction(padded, ex, ey, d, lab)
    succ = np.empty(len(x), dtype=np.int64)
    end = ey * w1 + ex
    for k in range(4):
        sel = nd == k
        succ[sel] = offset[k] + np.searchsorted(vids[k], end[sel])
    return x, y, lab, succ, nd != d


def _corner_rings(succ: np.ndarray, turns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The edges that start at a corner (the one before turns into them), ring after ring in ring order, and
    the ring of each."""
    corner = np.zeros(len(succ), dtype=bool)
    corner[succ[turns]] = True
    jump = succ.copy()  # -> the next corner along the ring, by pointer doubling over the straight runs
    while not corner[jump].all():
        jump = np.where(corner[jump], jump, jump[jump])
    ids = np.flatnonzero(corner)
    rank_of = np.full(len(succ), -1)
    rank_of[ids] = np.arange(len(ids))
    ring, place = _cycles(rank_of[jump[ids]])
    order = np.lexsort((place, ring))
    return ids[order], ring[order]


def _polygons(px: np.ndarray, py: np.ndarray, lab: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rings (corners ring after ring, `counts` each) -> polygons and their labels. Outer rings run one way round
    (shoelace area > 0 here), holes the other."""
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    after = np.arange(1, len(px) + 1)
    after[starts + counts - 1] = starts  # each ring closes on its own first corner
    area2 = np.add.reduceat(px * py[after] - px[after] * py, starts)
    ring_lab = lab[starts]
    outer = area2 > 0
    owner = _owners(px, py, starts, ring_lab, outer, area2)
    # Rings grouped by polygon (its outer ring first), polygons in the order of their outer ring.
    poly = np.cumsum(outer) - 1
    ring_poly = np.where(outer, poly, poly[owner])
    ring_order = np.lexsort((~outer, ring_poly))
    n = counts[ring_order]
    vertex_order = np.arange(n.sum()) + np.repeat(starts[ring_order] - (np.cumsum(n) - n), n)
    coords = np.column_stack([px[vertex_order], py[vertex_order]]).astype(np.float64)
    rings = shapely.linearrings(coords, indices=np.repeat(np.arange(len(ring_order)), n))
    return shapely.polygons(rings, indices=ring_poly[ring_order]), ring_lab[outer].astype(np.int64)


def _rings(cx: np.ndarray, cy: np.ndarray, ring: np.ndarray, w1: int) -> tuple[np.ndarray, np.ndarray]:
    """(corner indices ring after ring, corners per ring), with every ring that passes a vertex twice cut there.

    A ring pinched at a vertex (a region's own pixels meet only diagonally there) encloses a hole that touches
    its outline at that point; GDAL gives such a hole as a ring of its own, which keeps the polygon valid.
    """
    starts = np.flatnonzero(np.r_[True, ring[1:] != ring[:-1]])
    counts = np.diff(np.r_[starts, len(ring)])
    number = np.repeat(np.arange(len(starts)), counts)
    vid = cy * w1 + cx
    o = np.lexsort((vid, number))
    twice = np.flatnonzero((vid[o][1:] == vid[o][:-1]) & (number[o][1:] == number[o][:-1]))
    if len(twice) == 0:
        return np.arange(len(ring)), counts
    first, second = o[twice], o[twice + 1]  # the two visits; the first comes first (a stable sort)
    by_ring: dict[int, list[tuple[int, int]]] = {}
    for k in np.lexsort((second, number[second])).tolist():
        r = int(number[second[k]])
        by_ring.setdefault(r, []).append((int(first[k] - starts[r]), int(second[k] - starts[r])))
    pieces: list[np.ndarray] = []  # corner indices: runs of whole rings, and the loops of each pinched ring
    sizes: list[np.ndarray] = []  # corners per ring, or per loop
    after = 0  # the first ring after the last pinched one
    bounds = np.r_[starts, len(ring)]
    for r in sorted(by_ring):
        pieces.append(np.arange(bounds[after], bounds[r]))
        sizes.append(counts[after:r])
        loops = _loops(np.arange(bounds[r], bounds[r + 1]), by_ring[r])
        pieces.extend(loops)
        sizes.append(np.array([len(loop) for loop in loops]))
        after = r + 1
    pieces.append(np.arange(bounds[after], len(ring)))
    sizes.append(counts[after:])
    return np.concatenate(pieces), np.concatenate(sizes)


def _loops(idx: np.ndarray, visits: list[tuple[int, int]]) -> list[np.ndarray]:
    """A ring's corners cut into simple loops at the vertices it passes twice (`visits`: the places of both
    passes, in the order of the second). Each second pass closes a loop back to the first; the ring keeps the
    first pass. A vertex whose first pass went with an earlier loop is passed only once by what is left."""
    alive = np.ones(len(idx), dtype=bool)
    loops = []
    for i, j in visits:
        if not alive[i]:
            continue
        loops.append(idx[i + np.flatnonzero(alive[i:j])])
        alive[i + 1:j + 1] = False
    return [idx[alive], *loops]


def _owners(
    cx: np.ndarray, cy: np.ndarray, starts: np.ndarray, ring_lab: np.ndarray, outer: np.ndarray, area2: np.ndarray
) -> np.ndarray:
    """For each hole, the index of its outer ring: the only one of its label, else the smallest that covers it."""
    owner = np.arange(len(starts))
    holes = np.flatnonzero(~outer)
    if len(holes) == 0:
        return owner
    outers = np.flatnonzero(outer)
    per_label = np.bincount(ring_lab[outers])
    only = np.full(len(per_label), -1)
    only[ring_lab[outers]] = outers  # read only for labels with one outer ring
    single = per_label[ring_lab[holes]] == 1
    owner[holes[single]] = only[ring_lab[holes[single]]]
    ends = np.r_[starts[1:], len(cx)]

    def ring_polygon(r: int) -> shapely.Polygon:
        return shapely.Polygon(np.column_stack([cx[starts[r]:ends[r]], cy[starts[r]:ends[r]]]))

    for h in holes[~single]:  # a label in several parts with holes: rare
        candidates = outers[ring_lab[outers] == ring_lab[h]]
        hole = ring_polygon(h)
        covering = [r for r in candidates if ring_polygon(r).covers(hole)]
        owner[h] = min(covering, key=lambda r: area2[r])
    return owner
