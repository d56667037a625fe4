"""Reading one grid window: pixels at the model's GSD, padded to the model size, plus its validity mask."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from fpn_geo.errors import InputError
from fpn_geo.radiometry import Radiometry
from fpn_geo.scene import gdal_reason
from fpn_geo.stac import redact
from fpn_geo.tiling import GridWindow


@dataclass(frozen=True)
class WindowData:
    """A window ready for the model. `valid` covers its in-grid part; `model_hw` is that part's size in `image`."""

    window: GridWindow
    image: np.ndarray  # (bands, M, M): the source dtype, or float32 in the model's range when a radiometry maps it
    valid: np.ndarray  # (h, w) bool on the model grid: False under nodata, internal mask or alpha
    model_hw: tuple[int, int]


def scene_window(
    window: GridWindow, grid_hw: tuple[int, int], scale: float, scene_hw: tuple[int, int]
) -> tuple[Window, tuple[int, int]]:
    """The scene pixels under a model-grid window (fractional when scale != 1) and the in-grid size of the window.

    scale = model pixels per scene pixel. The model grid may run up to one model pixel past the scene's
    edge (its size is rounded up); that sliver reads the scene's last pixels stretched.
    """
    clipped = window.clipped(*grid_hw)
    mh, mw = int(clipped.height), int(clipped.width)
    if scale == 1.0:
        return clipped, (mh, mw)
    h, w = scene_hw
    r0, c0 = window.row_off / scale, window.col_off / scale
    return Window(c0, r0, min(mw / scale, w - c0), min(mh / scale, h - r0)), (mh, mw)


def all_valid(src: rasterio.DatasetReader) -> bool:
    """No nodata, internal mask or alpha on any band: every pixel is valid, so no mask need be read."""
    return all(flags == [MaskFlags.all_valid] for flags in src.mask_flag_enums)


def read_window(
    src: rasterio.DatasetReader,
    window: GridWindow,
    bands: tuple[int, ...],
    model_size: int,
    scale: float = 1.0,
    grid_hw: tuple[int, int] | None = None,
    radiometry: Radiometry | None = None,
    masked: bool = True,
) -> WindowData | None:
    """Read a model-grid window (grid_hw: the grid's size; default the scene's); None when it is all nodata.

    radiometry: the scene's mapping to the model's input range (`fpn_geo.radiometry.resolve_radiometry`),
    applied after resampling; None feeds the values as they are. masked=False: the scene is `all_valid`, and
    its mask is not read (a quarter of a window's read time, resampled to say "all valid").
    """
    grid_hw = grid_hw or (src.height, src.width)
    win, (mh, mw) = scene_window(window, grid_hw, scale, (src.height, src.width))
    try:
        if masked:
            valid = src.dataset_mask(window=win, out_shape=(mh, mw)) > 0
            if not valid.any():
                return None
        else:
            valid = np.ones((mh, mw), dtype=bool)
        image = src.read(list(bands), window=win, out_shape=(len(bands), mh, mw), resampling=Resampling.bilinear)
    except RasterioIOError as e:
        # One line, and no credentials a URL may carry (redact): GDAL's reason for a broken download is the
        # first message of the chain, and it names the URL.
        raise InputError(
            f"cannot read window at row {window.row_off}, col {window.col_off} of {redact(src.name)}: "
            f"{redact(gdal_reason(e))}"
        ) from e
    if radiometry is not None:
        image = radiometry.apply(image)
    elif image.dtype.kind == "f":  # a caller that does not map radiometry: real values would be fed unscaled
        raise InputError(
            f"{src.name} has {image.dtype} pixels; map them to the model's input range with a radiometry rule "
            "(fpn_geo.radiometry.resolve_radiometry), e.g. {rule: linear, scale: 255} for reflectance in 0-1"
        )
    if (mh, mw) != (model_size, model_size):
        # Mirror, not zeros: the model sees plausible context at the scene edge; the blend crops it off.
        image = np.pad(image, ((0, 0), (0, model_size - mh), (0, model_size - mw)), mode="symmetric")
    return WindowData(window, image, valid, (mh, mw))
