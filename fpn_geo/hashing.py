"""Checksums for provenance and for matching checkpoints to their metadata."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from fpn_geo.errors import InputError


class Stopped(Exception):
    """A hash given up on: its `stop` event was set."""


def sha256_file(path: str | Path, chunk: int = 1 << 20, stop: threading.Event | None = None) -> str:
    """sha256 of a local file's bytes, read in chunks so a large scene never sits in memory; `stop`, when set,
    gives up between chunks (raises Stopped)."""
    h = hashlib.sha256()
    p = str(path)
    try:
        with open(p, "rb") as f:
            while block := f.read(chunk):
                if stop is not None and stop.is_set():
                    raise Stopped(p)
                h.update(block)
    except OSError as e:
        raise InputError(f"cannot read {p} to checksum it: {e}") from e
    return h.hexdigest()


class BackgroundSha256:
    """A file's sha256 computed on a thread beside the run: a large scene's bytes take seconds to hash (about
    1 s a GB), which at the end of a run would be seconds of nothing else. `result()` waits for it; `cancel()`
    stops it between chunks, so a failed run does not wait for the hash of a file it no longer needs. The thread
    is a daemon: it never keeps the interpreter alive."""

    def __init__(self, path: str | Path) -> None:
        self._stop = threading.Event()
        self._value: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(path,), name="fpn-geo-sha256", daemon=True)
        self._thread.start()

    def _run(self, path: str | Path) -> None:
        try:
            self._value = sha256_file(path, stop=self._stop)
        except BaseException as e:  # handed to whoever asks for the result
            self._error = e

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value

    def cancel(self) -> None:
        self._stop.set()
