"""A full disk said on one line: what GDAL and libtiff print while a file is written is held back, and a write that
fails for want of space becomes one OutputError that names the folder and the space the outputs need.

GDAL's messages reach Python only through the handler rasterio pushes for the calling thread (CPLPushErrorHandler
is per thread); those raised in GDAL's own threads (the COG's compression threads) go to GDAL's default handler,
and libtiff's `_tiffWriteProc: No space left on device` can go straight to file descriptor 2. So both are held:
the `rasterio` loggers, and file descriptor 2 itself, for the few seconds of the write.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from fpn_geo.errors import OutputError
from fpn_geo.outputs import free_bytes

log = logging.getLogger(__name__)

FULL_MARKS = ("no space left on device", "disk is full", "disk full")
NEARLY_FULL_BYTES = 64 * 1024  # free space under this, after a failed write: the write ran out of it

GPKG_BASE_BYTES = 128_000  # a GeoPackage of a few buildings: its tables, provenance, style
GPKG_BYTES_PER_BUILDING = 800  # an outline of a few dozen vertices, its row and its R-tree entry
COG_PER_TILE_BYTE = 1.5  # the COG re-encodes the blocks' LZW tiles as DEFLATE (about the same) plus overviews (1/3)


def output_bytes_estimate(buildings: int, tile_bytes: int) -> int:
    """About how many bytes a run's outputs take: the GeoPackage of `buildings`, and the probability COG made from
    `tile_bytes` of block tiles (0: none). An estimate: compression and outline sizes vary."""
    return GPKG_BASE_BYTES + GPKG_BYTES_PER_BUILDING * buildings + int(COG_PER_TILE_BYTE * tile_bytes)


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _says_full(e: BaseException | None, messages: list[str]) -> bool:
    while e is not None:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        messages = [*messages, str(e)]
        e = e.__cause__ or e.__context__
    return any(mark in m.lower() for m in messages for mark in FULL_MARKS)


def disk_full_error(folder: Path, need_bytes: int) -> OutputError:
    """The one line for a write into `folder` that ran out of space, with the space the outputs need."""
    return OutputError(
        f"the disk is full: {folder} ran out of space for the outputs, which need about {_size(need_bytes)} in all "
        "(an estimate); free some space there or write elsewhere; nothing was replaced"
    )


class _Held(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def held_library_messages() -> Iterator[list[str]]:
    """Hold back what GDAL, libtiff and rasterio print while the block runs, from any thread; the list yielded is
    filled with their lines when the block ends. Everything else written to file descriptor 2 meanwhile is held
    too (and given back by `disk_full_as_one_line` when the block succeeds)."""
    lines: list[str] = []
    rio = logging.getLogger("rasterio")
    held = _Held()
    with tempfile.TemporaryFile() as hold:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(hold.fileno(), 2)
        rio.addHandler(held)
        propagate, rio.propagate = rio.propagate, False
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            rio.propagate = propagate
            rio.removeHandler(held)
            hold.seek(0)
            lines += held.lines + hold.read().decode(errors="replace").splitlines()


@contextlib.contextmanager
def disk_full_as_one_line(folder: Path, need_bytes: Callable[[], int]) -> Iterator[None]:
    """Run a write into `folder` with the libraries' messages held: if it fails and the disk is full (the
    libraries or the error say so, or the folder has almost nothing left), raise `disk_full_error` instead; any
    other failure goes on as it was, its messages logged (`-v`); a success gives the messages back to stderr."""
    messages: list[str] = []
    try:
        with held_library_messages() as messages:
            yield
    except BaseException as e:
        for line in messages:
            log.info("%s", line)
        free = free_bytes(folder)
        if _says_full(e, messages) or (free is not None and free < NEARLY_FULL_BYTES and isinstance(e, Exception)):
            raise disk_full_error(folder, need_bytes()) from e
        raise
    if messages:
        print("\n".join(messages), file=sys.stderr)
