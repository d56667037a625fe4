"""Checksums for provenance and for matching checkpoints to their metadata."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fpn_geo.errors import InputError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a local file's bytes, read in chunks so a large scene never sits in memory."""
    h = hashlib.sha256()
    p = str(path)
    try:
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError as e:
        raise InputError(f"cannot read {p} to checksum it: {e}") from e
    return h.hexdigest()
