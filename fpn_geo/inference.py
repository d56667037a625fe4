"""Batched inference: windows in, per-window building probabilities (uint8) out, reading ahead of the model."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import rasterio
import torch
import torch.nn.functional as F

from fpn_geo.model.checkpoint import ModelMeta
from fpn_geo.reading import WindowData, read_window
from fpn_geo.separate import separator_index
from fpn_geo.streaming import in_order
from fpn_geo.timing import StageTimes  # noqa: F401  (re-exported)
from fpn_geo.tiling import GridWindow


class Predictor(Protocol):
    """Anything that turns a batch of windows into foreground probabilities.

    Returns uint8 (N, K, M, M): channel 0 is P(building footprint) = 1 - P(background); channel 1,
    where the model has a contact class, is P(contact). uint8 keeps results small across processes.
    """

    def __call__(self, images: np.ndarray, windows: list[GridWindow]) -> np.ndarray: ...


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
        sep = separator_index(meta.classes)  # "separator", or "contact" in older checkpoints
        self.has_contact = sep is not None
        self.contact_index = sep if sep is not None else -1

    @property
    def channels(self) -> int:
        return 2 if self.has_contact else 1

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
        if self.has_contact:
            out.append(p[:, self.contact_index])
        return (torch.stack(out, dim=1)[:n] * 255).round_().to(torch.uint8).cpu().numpy()


def to_scene(probs: np.ndarray, data: WindowData) -> np.ndarray:
    """Crop the padding off a window's prediction and bring it back to scene pixels."""
    mh, mw = data.model_hw
    p = probs[:, :mh, :mw]
    h, w = data.valid.shape
    if (mh, mw) != (h, w):
        t = torch.from_numpy(np.ascontiguousarray(p)).float()[None]
        p = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0].round().clamp(0, 255).byte().numpy()
    return np.where(data.valid, p, 0).astype(np.uint8)  # nodata never becomes building


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
    times: StageTimes, readers: int = 1,
) -> Iterator[tuple[list[GridWindow], list[WindowData]]]:
    """Yield (windows asked, windows with data) per batch, in order; all-nodata windows are dropped here.

    With readers > 1, batches are read by that many threads, each with its own dataset handle (GDAL
    releases the GIL while it decodes), at most 2 per reader ahead of the consumer.
    """
    def read_group(src, group: list[GridWindow]) -> list[WindowData]:
        return [d for d in (read_window(src, w, bands, model_size, scale) for w in group) if d is not None]

    if readers <= 1:
        with rasterio.open(path) as src:
            for group in _batches(windows, batch):
                with times.time("read"):
                    data = read_group(src, group)
                yield group, data
        return
    local, lock, opened = threading.local(), threading.Lock(), []

    def read(group: list[GridWindow]) -> tuple[list[GridWindow], list[WindowData]]:
        if not hasattr(local, "src"):
            local.src = rasterio.open(path)
            with lock:
                opened.append(local.src)
        t0 = time.perf_counter()
        data = read_group(local.src, group)
        with lock:  # reader-seconds summed over threads
            times["read"] = times.get("read", 0.0) + time.perf_counter() - t0
        return group, data

    try:
        with ThreadPoolExecutor(readers, thread_name_prefix="fpn-geo-read") as pool:
            yield from in_order(lambda group: pool.submit(read, group), _batches(windows, batch), 2 * readers)
    finally:
        for src in opened:
            src.close()


def prefetch(it: Iterator, depth: int = 2) -> Iterator:
    """Run an iterator in a thread `depth` items ahead: the next windows are read while the model runs."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in it:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)

    thread = threading.Thread(target=work, daemon=True, name="fpn-geo-reader")
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()


def predict_windows(
    path: str,
    windows: Iterable[GridWindow],
    bands: tuple[int, ...],
    predictor: Predictor,
    model_size: int,
    scale: float = 1.0,
    batch: int = 4,
    times: StageTimes | None = None,
    on_batch: Callable[[int], None] | None = None,
    readers: int = 0,
) -> Iterator[tuple[GridWindow, np.ndarray | None, np.ndarray | None]]:
    """Yield (window, probabilities (K, h, w) uint8, valid mask) for every window; (window, None, None) if all nodata.

    readers: reader threads; 0 chooses by the predictor's device (`reader_threads`).
    """
    times = times if times is not None else StageTimes()
    readers = reader_threads(readers, getattr(predictor, "device", "cpu"))
    for group, data in prefetch(read_batches(path, windows, bands, model_size, scale, batch, times, readers)):
        probs = None
        if data:
            with times.time("model"):
                probs = predictor(np.stack([d.image for d in data]), [d.window for d in data])
        by_window = {d.window: (to_scene(p, d), d.valid) for d, p in zip(data, probs if probs is not None else [])}
        for w in group:
            yield (w, *by_window.get(w, (None, None)))
        if on_batch:
            on_batch(len(group))
