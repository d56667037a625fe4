"""The scene's checksum runs beside the blocks and never holds up a failed run."""

import hashlib
import threading

import pytest

from fpn_geo.errors import InputError
from fpn_geo.hashing import BackgroundSha256, Stopped, sha256_file


def test_background_hash_is_the_files_sha256(tmp_path):
    f = tmp_path / "scene.tif"
    f.write_bytes(bytes(range(256)) * 10_000)
    assert BackgroundSha256(f).result() == hashlib.sha256(f.read_bytes()).hexdigest()


def test_a_set_stop_gives_up_between_chunks(tmp_path):
    f = tmp_path / "scene.tif"
    f.write_bytes(b"x" * 100)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        sha256_file(f, stop=stop)


def test_cancel_stops_a_long_hash(tmp_path):
    f = tmp_path / "big.tif"
    with open(f, "wb") as out:
        out.truncate(256 << 20)  # 256 chunks of 1 MB (sparse where the file system allows): far slower than a cancel
    h = BackgroundSha256(f)
    h.cancel()
    with pytest.raises(Stopped):
        h.result()


def test_an_unreadable_file_fails_when_its_hash_is_asked_for(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        BackgroundSha256(tmp_path / "gone.tif").result()
