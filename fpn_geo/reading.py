"""Reading one grid window: pixels at the model's GSD, padded to the model size, plus its validity mask."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError

from fpn_geo.errors import InputError
from fpn_geo.radiometry import Radiometry
from fpn_geo.tiling import GridWindow


@dataclass(frozen=True)
class WindowData:
    """A window ready for the model. `valid` is in scene pixels; `model_hw` is the real (unpadded) part of `image`."""

    window: GridWindow
    image: np.ndarray  # (bands, M, M): the source dtype, or float32 in the model's range when a radiometry maps it
    valid: np.ndarray  # (h, w) bool: False under nodata, internal mask or alpha
    model_hw: tuple[int, int]


def model_extent(h: int, w: int, scale: float) -> tuple[int, int]:
    """Size in model pixels of h x w scene pixels; scale = model pixels per scene pixel."""
    return max(1, round(h * scale)), max(1, round(w * scale))


def read_window(
    src: rasterio.DatasetReader,
    window: GridWindow,
    bands: tuple[int, ...],
    model_size: int,
    scale: float = 1.0,
    radiometry: Radiometry | None = None,
) -> WindowData | None:
    """Read a window; None when every pixel is nodata, so the model never sees it.

    radiometry: the scene's mapping to the model's input range (`fpn_geo.radiometry.resolve_radiometry`),
    applied after resampling; None feeds the values as they are.
    """
    win = window.clipped(src.height, src.width)
    h, w = int(win.height), int(win.width)
    try:
        valid = src.dataset_mask(window=win) > 0
        if not valid.any():
            return None
        mh, mw = model_extent(h, w, scale) if scale != 1.0 else (h, w)
        image = src.read(list(bands), window=win, out_shape=(len(bands), mh, mw), resampling=Resampling.bilinear)
    except RasterioIOError as e:
        raise InputError(f"cannot read window at row {window.row_off}, col {window.col_off} of {src.name}: {e}") from e
    if radiometry is not None:
        image = radiometry.apply(image)
    elif image.dtype.kind == "f":  # a caller that does not map radiometry: real values would be fed unscaled
        raise InputError(
            f"{src.name} has {image.dtype} pixels; map them to the model's input range with a radiometry rule "
            "(fpn_geo.radiometry.resolve_radiometry), e.g. {rule: linear, scale: 255} for reflectance in 0-1"
        )
    if (mh, mw) != (model_size, model_size):
        # Mirror, not zeros: the model sees plausible context at the scene edge; the stitcher crops it off.
        image = np.pad(image, ((0, 0), (0, model_size - mh), (0, model_size - mw)), mode="symmetric")
    return WindowData(window, image, valid, (mh, mw))
