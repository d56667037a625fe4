"""Test doubles and helpers that the tests and the benchmarks share (never shipped in the wheel).

- `OraclePredictor` / `oracle_segmenter`: a "model" that answers with the rasterized truth of each window. It
  proves the pipeline around the model (windows, blending, vectorization, writing) loses nothing, and measures
  the pipeline's own cost in benchmarks.
- `make_checkpoint`: a random-weights checkpoint, in a given architecture or that of an existing checkpoint.
- `write_raster`: a small GeoTIFF from an array.
- The bundled sample data's paths.

Imports neither pytest nor tests.conftest, so benchmarks can import it: `from tests.doubles import ...`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
KAMPALA = DATA / "kampala_oam" / "mosaic_z21_12x8_3072x2048.tif"
KAMPALA_Z20 = DATA / "kampala_oam" / "mosaic_z20_6x4_1536x1024.tif"
KAMPALA_LABELS = DATA / "kampala_oam" / "labels.geojson"


def make_checkpoint(
    path: Path, depth: int = 18, bands: int = 3, classes=("background", "building", "contact"), seed: int = 0,
    like: Path | None = None,
) -> Path:
    """Random weights: in the architecture of checkpoint `like` (its NAME.json) if it has one, else ResNet-`depth`."""
    import dataclasses

    import torch

    from fpn_geo.model import ModelMeta, build_model, save_checkpoint
    from fpn_geo.model.meta import read_meta

    torch.manual_seed(seed)
    if like is not None and Path(like).with_suffix(".json").is_file():
        meta = dataclasses.replace(read_meta(like), weights_sha256="", extra={})
    else:
        meta = ModelMeta(depth=depth, bands=tuple(range(1, bands + 1)), mean=(100.0,) * bands, std=(50.0,) * bands,
                         classes=tuple(classes))
    save_checkpoint(build_model(meta), meta, path)
    return Path(path)


def write_raster(path: Path, data: np.ndarray, crs="EPSG:32636", transform=None, nodata=None, **kw) -> Path:
    """A GeoTIFF of `data` (bands, h, w); `crs=None` or `transform=False` leave them out (bad-input tests)."""
    import rasterio
    from rasterio.transform import from_origin

    count, h, w = data.shape
    profile = dict(driver="GTiff", width=w, height=h, count=count, dtype=data.dtype, nodata=nodata, **kw)
    if crs is not None:
        profile["crs"] = crs
    if transform is not False:
        profile["transform"] = transform or from_origin(500000, 40000, 0.3, 0.3)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


class OraclePredictor:
    """Rasterizes label polygons (already in the scene CRS) onto each window, at scene resolution.

    Channel 0 is the footprint, channel 1 the contact band between buildings (as a trained 3-class
    model would give), so touching buildings can be separated exactly as in production.
    """

    def __init__(self, labels, transform, contact_px: int = 2) -> None:
        self.geoms = list(labels.geometry)
        self.sindex = labels.sindex
        self.transform = transform
        self.contact_px = contact_px

    def __call__(self, images: np.ndarray, windows: list) -> np.ndarray:
        import shapely
        from affine import Affine

        from fpn_geo.truth import CONTACT, rasterize_classes

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


def oracle_segmenter(scene_path: str | Path, labels):
    """A `pipeline.Segmenter` whose "model" is `OraclePredictor(labels)`, answering on the scene's own grid."""
    import rasterio

    from fpn_geo.model.meta import ModelMeta
    from fpn_geo.pipeline import Segmenter

    with rasterio.open(scene_path) as src:
        transform = src.transform
    return Segmenter(OraclePredictor(labels, transform), ModelMeta(gsd_m=None))
