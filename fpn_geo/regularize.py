"""Right-angled outlines: replace nearly rectangular building polygons by their minimum rotated rectangle.

Analysts expect regular outlines; traced raster edges are stair-stepped. A polygon whose IoU with its
minimum-area rotated rectangle is at least ``rect_iou`` becomes that rectangle (4 right angles, 5 vertices);
others (L-shapes, courtyards, round huts) are left as they are. Pure shapely, vectorized; the CRS is the caller's
(use a metric or conformal CRS: Web Mercator and UTM keep right angles, lon/lat degrees do not).
"""

from __future__ import annotations

import numpy as np
import shapely


def regularize(geoms, rect_iou: float = 0.85) -> np.ndarray:
    """Each geometry, or its oriented minimum rectangle where the two overlap by IoU >= ``rect_iou``."""
    g = np.asarray(geoms, dtype=object)
    if not 0 < rect_iou <= 1:
        raise ValueError(f"rect_iou={rect_iou!r}; expected a number in (0, 1], e.g. 0.85")
    if len(g) == 0:
        return g
    ok = ~shapely.is_missing(g) & ~shapely.is_empty(g)
    out = g.copy()
    rect = shapely.oriented_envelope(g[ok])
    inter = shapely.area(shapely.intersection(g[ok], rect))
    union = shapely.area(shapely.union(g[ok], rect))
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    take = (iou >= rect_iou) & (shapely.get_type_id(rect) == 3)  # 3: Polygon (not a degenerate line)
    sub = out[ok]
    sub[take] = rect[take]
    out[ok] = sub
    return out


def vertex_count(geoms) -> int:
    """Vertices of all exteriors and holes (closing points not counted twice)."""
    g = np.asarray(geoms, dtype=object)
    rings = shapely.get_num_coordinates(g) - (shapely.get_num_interior_rings(g) + 1)
    return int(np.sum(rings))
