"""A quicklook: the scene, read downsampled, with the found buildings outlined. For people who would rather look.

Use it after a run to check at a glance that polygons sit on buildings. It asks GDAL for at most `max_px` pixels
a side, so memory is the same on any scene size; time grows slowly (1.7 s at 8192², 5.3 s at 16384² on 2 cores,
for a tiled scene without overviews, where GDAL still decodes every block).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from fpn_geo.geopackage import BUILDINGS
from fpn_geo.outputs import atomic_output


def _stretch(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """2-98 % stretch per band to 0..1, so 16-bit or dark scenes show up."""
    out = np.zeros(image.shape, np.float32)
    for i, band in enumerate(image):
        vals = band[valid] if valid.any() else band.ravel()
        lo, hi = np.percentile(vals, (2, 98)) if vals.size else (0, 1)
        out[i] = np.clip((band.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
    return out


def preview(
    scene_path: str | Path, bands: tuple[int, ...] = (1, 2, 3), max_px: int = 768
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The scene read at most `max_px` a side as stretched RGB (3, h, w) in 0..1, and its bounds."""
    with rasterio.open(scene_path) as src:
        f = max(src.width, src.height) / max_px
        h, w = max(1, round(src.height / max(f, 1))), max(1, round(src.width / max(f, 1)))
        use = [b for b in bands if b <= src.count][:3] or [1]
        image = src.read(use, out_shape=(len(use), h, w), resampling=Resampling.average)
        valid = src.dataset_mask(out_shape=(h, w)) > 0
        bounds = tuple(src.bounds)
    rgb = _stretch(image, valid)
    return (np.repeat(rgb, 3, axis=0) if len(use) == 1 else rgb), bounds


def render_quicklook(
    scene_path: str, gpkg_path: str | Path, png_path: str | Path, bands: tuple[int, ...] = (1, 2, 3),
    max_px: int = 768, title: str | None = None,
) -> Path:
    """Write a PNG of the scene (at most `max_px` a side) with the GeoPackage's buildings outlined in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyogrio

    rgb, (left, bottom, right, top) = preview(scene_path, bands, max_px)
    h, w = rgb.shape[1:]
    buildings = pyogrio.read_dataframe(gpkg_path, layer=BUILDINGS)
    dpi = 100
    fig = plt.figure(figsize=(w / dpi, h / dpi + (0.3 if title else 0)), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, h / (h + (30 if title else 0))))
    ax.imshow(np.moveaxis(rgb, 0, -1), extent=(left, right, bottom, top), interpolation="nearest")
    if len(buildings):
        buildings.boundary.plot(ax=ax, color="red", linewidth=0.6)
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=8, y=0.995)
    png_path = Path(png_path)
    try:
        with atomic_output(png_path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return png_path


def embeddable_jpeg(image_path: str | Path, max_px: int = 1024, max_bytes: int = 400_000) -> bytes:
    """The quicklook as a JPEG of at most `max_px` a side and `max_bytes`, to embed in a report (Prefect's
    markdown artifacts take about 400 KB): the quality steps down until it fits."""
    import io

    from PIL import Image

    with Image.open(image_path) as im:
        im = im.convert("RGB")
        im.thumbnail((max_px, max_px))
        for quality in (85, 75, 60, 45, 30):
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=quality, optimize=True)
            if buf.tell() <= max_bytes:
                return buf.getvalue()
            im = im.resize((max(1, im.width * 3 // 4), max(1, im.height * 3 // 4)))
    return buf.getvalue()
