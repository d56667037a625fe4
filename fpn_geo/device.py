"""Where the model runs, how many threads feed and follow it, where blocks are finished (threads or processes),
and which steps run where the model is: the choices that depend on the device.

Importing this module does not import torch; `resolve_device` does, when it must look for CUDA.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TYPE_CHECKING

from fpn_geo.errors import ConfigError
from fpn_geo.signals import die_with_parent

if TYPE_CHECKING:
    from fpn_geo.config import SegmentConfig

log = logging.getLogger("fpn_geo")


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" where CUDA is available, else "cpu". A device asked for that this host or this build of
    torch does not have (CUDA, cuda:N past the last GPU, Apple's mps) is a ConfigError here, before the model
    moves to it, instead of torch's traceback from deep inside `Module.to`."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r} asked for, but this host has {torch.cuda.device_count()} CUDA device(s) "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}); use one of them or --device cuda"
            )
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' asked for, but Apple's MPS is not available here (it needs macOS on Apple "
                          "silicon and a torch built with it); use --device cpu")
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


def _on_device(choice: str, device: str) -> bool:
    """A `cpu|device|auto` setting: auto means where the model runs when that is CUDA."""
    return choice == "device" or (choice == "auto" and str(device).startswith("cuda"))


def labels_on_device(cfg: SegmentConfig, device: str) -> bool:
    """Whether blocks are labelled by torch where the model runs (`labelling`: auto means on CUDA)."""
    return _on_device(cfg.labelling, device)


def resamples_on_device(cfg: SegmentConfig, device: str) -> bool:
    """Whether windows go up at the scene's resolution and are resampled where the model runs (`resampling`: auto
    means on CUDA); the scene must allow it too (`fpn_geo.resample_torch.resamples_as_gdal`)."""
    return _on_device(cfg.resampling, device)


def post_pool(kind: str, workers: int) -> Executor:
    """Where blocks are finished: threads, or spawned processes that die with this one. Tracing and shapely mostly
    release the GIL (two threads traced two blocks 1.4-1.6x faster than one), but the Python work left between
    them does not, so a GPU host with many cores may finish blocks faster in processes. A daemonic process (a Dask
    worker, by default) may not start children: there it is threads, said once in the log."""
    if kind == "processes":
        if not multiprocessing.current_process().daemon:
            return ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=die_with_parent, initargs=(signal.SIGTERM, os.getpid()),
            )
        log.warning("post_workers: processes, but this is a daemonic process (a Dask worker?): using threads; "
                    "start the workers with distributed.worker.daemon: false to allow processes")
    return ThreadPoolExecutor(workers, thread_name_prefix="fpn-geo-post")
