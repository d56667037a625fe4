"""Where the model runs and how many threads feed and follow it: the choices that depend on the device.

Importing this module does not import torch; `resolve_device` does, when it must look for CUDA.
"""

from __future__ import annotations

import os

from fpn_geo.errors import ConfigError


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" where CUDA is available, else "cpu"; a CUDA device asked for where there is none is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
    return device


def _auto_threads(threads: int, device: str, keep_free: int) -> int:
    """`threads` if set; 0 means auto: 1 on CPU, where the model needs the cores; on CUDA the cores but
    `keep_free`, 1-8."""
    if threads > 0:
        return threads
    return max(1, min(8, (os.cpu_count() or 1) - keep_free)) if str(device).startswith("cuda") else 1


def reader_threads(readers: int, device: str) -> int:
    """Threads reading windows ahead of the model: 0 = auto, one on CPU, on a GPU enough to feed it (up to 8)."""
    return _auto_threads(readers, device, keep_free=1)


def post_threads(threads: int, device: str) -> int:
    """Threads post-processing blocks beside the model: 0 = auto, one on CPU, on a GPU most of the cores (up to 8)."""
    return _auto_threads(threads, device, keep_free=2)
