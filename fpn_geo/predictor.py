"""The model as the pipeline sees it: a `Predictor` turns a batch of windows into building probabilities.

`SegmenterPredictor` is the one that runs a trained segmenter; tests and benchmarks use doubles
(`tests/doubles.py`) with the same call.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import numpy as np
import torch

from fpn_geo.device import resolve_device
from fpn_geo.model.meta import ModelMeta
from fpn_geo.tiling import GridWindow


class Predictor(Protocol):
    """Anything that turns a batch of windows into foreground probabilities on a 0-255 scale.

    Returns (N, K, M, M), a numpy array or a tensor on the predictor's device: channel 0 is P(building
    footprint) = 1 - P(background); channel 1, where the model has one, the separating class (contact or
    separator). A tensor stays on its device: the block's blend runs there and only uint8 comes back.
    """

    def __call__(self, images: np.ndarray | torch.Tensor, windows: list[GridWindow]) -> np.ndarray | torch.Tensor: ...


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
        self.meta = meta  # bands, statistics, classes: what it reads and what its channels mean

    @torch.inference_mode()
    def __call__(self, images: np.ndarray | torch.Tensor, windows: list[GridWindow]) -> torch.Tensor:
        """images: (N, bands, M, M) on the host, or a tensor already on the device (resampled there)."""
        n = len(images)
        self.batch_seen = max(self.batch_seen, n)
        if isinstance(images, torch.Tensor):
            x = images.to(self.device)
            if self.compiled and n < self.batch_seen:  # see below
                x = torch.cat([x, x.new_zeros((self.batch_seen - n, *x.shape[1:]))])
            return self._forward(x.contiguous(memory_format=torch.channels_last) if self.cuda else x, n)
        if self.compiled and n < self.batch_seen:
            # A new batch size makes torch.compile compile again (5 s on an H100 for the last, short batch).
            images = np.concatenate([images, np.zeros((self.batch_seen - n, *images.shape[1:]), images.dtype)])
        x = torch.from_numpy(images if images.dtype == np.uint8 else images.astype(np.float32))
        if self.cuda:
            x = x.pin_memory().to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return self._forward(x, n)

    def _forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """A batch on the device (uint8 or float, padded to `batch_seen` when compiled) -> the first n windows'
        probabilities, 0-255."""
        x = (x.float() - self.mean) / self.std
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext()
        with amp:
            logits = self.model(x)
        p = logits.float().softmax(dim=1)
        out = [1.0 - p[:, 0]]
        if self.meta.contact_index is not None:
            out.append(p[:, self.meta.contact_index])
        return torch.stack(out, dim=1)[:n] * 255
