"""A "model" that answers with the rasterized truth of each window.

It proves the pipeline around the model (windows, stitching, vectorization, writing) loses nothing,
and measures the pipeline's own cost in benchmarks.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine

from fpn_geo.labels import CONTACT, rasterize_classes

from fpn_geo.tiling import GridWindow


class OraclePredictor:
    """Rasterizes label polygons (already in the scene CRS) onto each window, at scene resolution.

    Channel 0 is the footprint, channel 1 the contact band between buildings (as a trained 3-class
    model would give), so touching buildings can be separated exactly as in production.
    """

    channels = 2

    def __init__(self, labels: gpd.GeoDataFrame, transform: Affine, contact_px: int = 2) -> None:
        self.geoms = list(labels.geometry)
        self.sindex = labels.sindex
        self.transform = transform
        self.contact_px = contact_px

    def __call__(self, images: np.ndarray, windows: list[GridWindow]) -> np.ndarray:
        n, _, size, _ = images.shape
        out = np.zeros((n, 2, size, size), np.uint8)
        for i, w in enumerate(windows):
            t = self.transform * Affine.translation(w.col_off, w.row_off)
            (x0, y0), (x1, y1) = t * (0, 0), t * (size, size)
            hits = self.sindex.query(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
            if len(hits):
                classes = rasterize_classes([self.geoms[j] for j in hits], t, (size, size), self.contact_px)
                out[i, 0] = np.where(classes > 0, 255, 0)
                out[i, 1] = np.where(classes == CONTACT, 255, 0)
        return out
