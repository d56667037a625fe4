"""A contact sheet of held-out blocks: each block's image with the model's outlines and the truth's, in one PNG.

A reader should see a model's quality before reading its numbers: blobs inside roofs, missed rows of houses or
outlines that merge neighbours show at a glance, where an F1 alone does not say which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio

from fpn_geo.geopackage import BUILDINGS
from fpn_geo.outputs import atomic_output
from fpn_geo.quicklook import preview

PREDICTED, TRUTH = "#ffd400", "#00e5ff"


@dataclass(frozen=True)
class Panel:
    """One held-out block: its GeoTIFF, the predicted GeoPackage, the truth file and a caption."""

    image: Path
    predicted: Path
    truth: Path
    caption: str


def render_contact_sheet(panels: list[Panel], png_path: str | Path, columns: int = 4, panel_px: int = 360,
                         title: str | None = None) -> Path:
    """Write one PNG with a tile per panel: image, truth outlines (cyan) under predicted outlines (yellow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyogrio

    if not panels:
        raise ValueError("a contact sheet needs at least one panel")
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    inch = panel_px / 100
    fig, axes = plt.subplots(rows, columns, figsize=(columns * inch, rows * (inch + 0.3) + 0.4), dpi=100,
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, panel in zip(axes.ravel(), panels):
        rgb, (left, bottom, right, top) = preview(panel.image, max_px=panel_px * 2)
        ax.imshow(np.moveaxis(rgb, 0, -1), extent=(left, right, bottom, top), interpolation="bilinear")
        truth = pyogrio.read_dataframe(panel.truth)
        predicted = pyogrio.read_dataframe(panel.predicted, layer=BUILDINGS)
        with rasterio.open(panel.image) as src:
            crs = src.crs
        if len(truth):
            truth.to_crs(crs).boundary.plot(ax=ax, color=TRUTH, linewidth=0.8)
        if len(predicted):
            predicted.boundary.plot(ax=ax, color=PREDICTED, linewidth=0.8)
        ax.set_xlim(left, right)
        ax.set_ylim(bottom, top)
        ax.set_title(panel.caption, fontsize=8)
    fig.suptitle((title + "\n" if title else "") + "cyan: truth, yellow: predicted", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (rows * (inch + 0.3) + 0.4)))  # room for the two-line title
    png_path = Path(png_path)
    try:
        with atomic_output(png_path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return png_path
