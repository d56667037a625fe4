"""Batched inference: model-grid windows in, per-window building probabilities (0-255, on the model's device) out,
reading ahead of the model."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import rasterio
import torch

from fpn_geo.model.checkpoint import ModelMeta
from fpn_geo.reading import WindowData, read_window
from fpn_geo.streaming import in_order
from fpn_geo.timing import StageTimes
from fpn_geo.tiling import GridWindow


class Predictor(Protocol):
    """Anything that turns a batch of windows into foreground probabilities on a 0-255 scale.

    Returns (N, K, M, M), a numpy array or a tensor on the predictor's device: channel 0 is P(building
    footprint) = 1 - P(background); channel 1, where the model has one, the separating class (contact or
    separator). A tensor stays on its device: the block's blend runs there and only uint8 comes back.
    """

    def __call__(self, images: np.ndarray, windows: list[GridWindow]) -> np.ndarray | torch.Tensor: ...


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from fpn_geo.errors import ConfigError

        raise ConfigError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
    return device


class SegmenterPredictor:
    """The segmenter on CPU (float32) or CUDA (bf16 autocast, channels_last, optional torch.compile).

    Normalization runs on the device, so only uint8 crosses the bus.
    """

    def __init__(self, model: torch.nn.Module, meta: ModelMeta, device: str = "auto", compile: bool = False) -> None:
        self.device = torch.device(resolve_device(device))
        self.cuda = self.device.type == "cuda"
        model = model.eval().to(self.device)
        if self.cuda:
            model = model.to(memory_format=torch.channels_last)
        self.model = torch.compile(model) if compile else model
        self.compiled = compile
        self.batch_seen = 0  # largest batch so far: a compiled model gets every batch padded to it
        self.mean = torch.tensor(meta.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(meta.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.meta = meta

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, windows: list[GridWindow]) -> np.ndarray:
        n = len(images)
        self.batch_seen = max(self.batch_seen, n)
        if self.compiled and n < self.batch_seen:
            # A new batch size makes torch.compile compile again (5 s on an H100 for the last, short batch).
            images = np.concatenate([images, np.zeros((self.batch_seen - n, *images.shape[1:]), images.dtype)])
        x = torch.from_numpy(images if images.dtype == np.uint8 else images.astype(np.float32))
        if self.cuda:
            x = x.pin_memory().to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        x = (x.float() - self.mean) / self.std
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext()
        with amp:
            logits = self.model(x)
        p = logits.float().softmax(dim=1)
        out = [1.0 - p[:, 0]]
        if self.meta.separator_index is not None:
            out.append(p[:, self.meta.separator_index])
        return torch.stack(out, dim=1)[:n] * 255


def _batches(items: Iterable, n: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def reader_threads(readers: int, device: str) -> int:
    """0 means auto: one reader on CPU, where the model needs the cores; on a GPU, enough to feed it (up to 8)."""
    if readers > 0:
        return readers
    return max(1, min(8, (os.cpu_count() or 1) - 1)) if str(device).startswith("cuda") else 1


def read_batches(
    path: str, windows: Iterable[GridWindow], bands: tuple[int, ...], model_size: int, scale: float, batch: int,
    times: StageTimes, readers: int = 1, grid_hw: tuple[int, int] | None = None,
) -> Iterator[tuple[list[GridWindow], list[WindowData]]]:
    """Yield (windows asked, windows with data) per batch, in order; all-nodata windows are dropped here.

    Batches are read by `readers` threads, each with its own dataset handle (GDAL releases the GIL while it
    decodes), at most 2 per reader ahead of the consumer: the next windows are read while the model runs.
    """
    local, lock, opened = threading.local(), threading.Lock(), []

    def read(group: list[GridWindow]) -> tuple[list[GridWindow], list[WindowData]]:
        if not hasattr(local, "src"):
            local.src = rasterio.open(path)
            with lock:
                opened.append(local.src)
        t0 = time.perf_counter()
        data = [d for d in (read_window(local.src, w, bands, model_size, scale, grid_hw) for w in group) if d is not None]
        with lock:  # reader-seconds summed over threads
            times["read"] = times.get("read", 0.0) + time.perf_counter() - t0
        return group, data

    try:
        with ThreadPoolExecutor(max(1, readers), thread_name_prefix="fpn-geo-read") as pool:
            yield from in_order(lambda group: pool.submit(read, group), _batches(windows, batch), 2 * max(1, readers))
    finally:
        for src in opened:
            src.close()


WindowProbs = tuple[GridWindow, "np.ndarray | torch.Tensor | None"]  # (K, h, w) float 0-255 (a tensor on CUDA); None: no data


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
) -> Iterator[WindowProbs]:
    """Yield (window, probabilities of its in-grid part, 0 under nodata) for every window; (window, None) if all nodata.

    readers: reader threads; 0 chooses by the predictor's device (`reader_threads`).
    """
    times = times if times is not None else StageTimes()
    device = torch.device(getattr(predictor, "device", "cpu"))
    readers = reader_threads(readers, str(device))
    for group, data in read_batches(path, windows, bands, model_size, scale, batch, times, readers, grid_hw):
        by_window: dict[GridWindow, np.ndarray | torch.Tensor] = {}
        if data:
            with times.time("model"):
                probs = predictor(np.stack([d.image for d in data]), [d.window for d in data])
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
