"""The scene's checksum runs beside the blocks and never holds up a failed run."""

import hashlib
import time

import pytest

from fpn_geo.errors import InputError
from fpn_geo.hashing import BackgroundSha256, Stopped


def test_background_hash_is_the_files_sha256(tmp_path):
    f = tmp_path / "scene.tif"
    f.write_bytes(bytes(range(256)) * 10_000)
    assert BackgroundSha256(f).result() == hashlib.sha256(f.read_bytes()).hexdigest()


def test_cancel_stops_a_long_hash_between_chunks(tmp_path):
    f = tmp_path / "huge.tif"
    with open(f, "wb") as out:
        out.truncate(20 << 30)  # 20 GB, sparse: tens of seconds to hash
    h = BackgroundSha256(f)
    t0 = time.perf_counter()
    h.cancel()
    with pytest.raises(Stopped):
        h.result()
    assert time.perf_counter() - t0 < 5


def test_an_unreadable_file_fails_when_its_hash_is_asked_for(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        BackgroundSha256(tmp_path / "gone.tif").result()
