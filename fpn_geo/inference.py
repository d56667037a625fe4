"""The infer step: model-grid windows in, per-window building probabilities (0-255, on the model's device) out.

`read_batches` reads batches of windows on reader threads, ahead of the model (`streaming.in_order`, the one
read-ahead); `predict_windows` runs each batch through a `Predictor` and masks nodata.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import rasterio
import torch

from fpn_geo.device import reader_threads
from fpn_geo.predictor import Predictor
from fpn_geo.radiometry import Radiometry
from fpn_geo.reading import WindowData, all_valid, read_window
from fpn_geo.resample_torch import SourceWindow, read_source_window, resamples_as_gdal
from fpn_geo.streaming import in_order
from fpn_geo.tiling import GridWindow
from fpn_geo.timing import StageTimes


def _batches(items: Iterable, n: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def read_batches(
    path: str, windows: Iterable[GridWindow], bands: tuple[int, ...], model_size: int, scale: float, batch: int,
    times: StageTimes, readers: int = 1, grid_hw: tuple[int, int] | None = None, radiometry: Radiometry | None = None,
    source: bool = False,
) -> Iterator[tuple[list[GridWindow], list[WindowData | SourceWindow]]]:
    """Yield (windows asked, windows with data) per batch, in order; all-nodata windows are dropped here.

    Batches are read by `readers` threads, each with its own dataset handle (GDAL releases the GIL while it
    decodes), at most 2 per reader ahead of the consumer: the next windows are read while the model runs.
    source=True: windows come at the scene's resolution (`SourceWindow`), for the model's device to resample,
    where that gives what GDAL gives (`resamples_as_gdal`, radiometry the identity); else as `read_window` reads.
    """
    as_is = radiometry is None or radiometry.is_identity
    local, lock, opened = threading.local(), threading.Lock(), []

    def read(group: list[GridWindow]) -> tuple[list[GridWindow], list[WindowData | SourceWindow]]:
        if not hasattr(local, "src"):
            local.src = rasterio.open(path)
            local.masked = not all_valid(local.src)
            local.source = source and as_is and resamples_as_gdal(local.src, bands, scale)
            with lock:
                opened.append(local.src)
        t0 = time.perf_counter()
        data: list[WindowData | SourceWindow]
        if local.source:  # mask-free scenes only: no window is all nodata
            data = [read_source_window(local.src, w, bands, scale, grid_hw) for w in group]
        else:
            data = [
                d
                for d in (
                    read_window(local.src, w, bands, model_size, scale, grid_hw, radiometry, local.masked)
                    for w in group
                )
                if d is not None
            ]
        with lock:  # reader-seconds summed over threads
            times["read"] = times.get("read", 0.0) + time.perf_counter() - t0
        return group, data

    try:
        with ThreadPoolExecutor(max(1, readers), thread_name_prefix="fpn-geo-read") as pool:
            yield from in_order(lambda group: pool.submit(read, group), _batches(windows, batch), 2 * max(1, readers))
    finally:
        for src in opened:
            src.close()


# (K, h, w) float 0-255 (a tensor on CUDA); None: no data
WindowProbs = tuple[GridWindow, "np.ndarray | torch.Tensor | None"]


def predict_windows(
    path: str,
    windows: Iterable[GridWindow],
    bands: tuple[int, ...],
    predictor: Predictor,
    model_size: int,
    scale: float = 1.0,
    batch: int = 4,
    times: StageTimes | None = None,
    readers: int = 0,
    grid_hw: tuple[int, int] | None = None,
    radiometry: Radiometry | None = None,
    resample: bool = False,
) -> Iterator[WindowProbs]:
    """Yield (window, probabilities of its in-grid part, 0 under nodata) for every window; (window, None) if all nodata.

    readers: reader threads; 0 chooses by the predictor's device (`reader_threads`). radiometry: the scene's
    values mapped to the model's range (`ScenePlan.radiometry`); None feeds them as they are. resample: windows
    are resampled on the predictor's device where the scene allows it (`fpn_geo.resample_torch`), else by GDAL.
    """
    times = times if times is not None else StageTimes()
    device = torch.device(getattr(predictor, "device", "cpu"))
    readers = reader_threads(readers, str(device))
    for group, data in read_batches(
        path, windows, bands, model_size, scale, batch, times, readers, grid_hw, radiometry, resample
    ):
        by_window: dict[GridWindow, np.ndarray | torch.Tensor] = {}
        if data:
            masks: list[torch.Tensor] | list[np.ndarray]
            images: np.ndarray | torch.Tensor
            sources = [d for d in data if isinstance(d, SourceWindow)]  # all or none: one scene, one way
            if sources:
                with times.time("resample"):
                    images = torch.stack([d.to_model(model_size, device) for d in sources])
            else:
                images = np.stack([d.image for d in data if isinstance(d, WindowData)])
            with times.time("model"):
                probs = predictor(images, [d.window for d in data])
                if device.type == "cuda":
                    probs = torch.as_tensor(probs).to(device, non_blocking=True).float()
                    masks = [torch.from_numpy(d.valid).to(device, non_blocking=True) for d in data]
                else:  # numpy on the CPU: see blend.BlockCanvas
                    probs = probs.numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs, np.float32)
                    masks = [d.valid for d in data]
                for d, p, valid in zip(data, probs, masks):
                    mh, mw = d.model_hw
                    by_window[d.window] = p[:, :mh, :mw] * valid  # nodata never becomes building
        for w in group:
            yield w, by_window.get(w)
