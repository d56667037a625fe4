"""Flow logic without servers: scene listing, output names, batch sizing and slicing."""

from pathlib import Path

import pytest

from flows.scenes import artifact_key, list_scenes, output_paths
from flows.segment import stream_in_order
from fpn_geo.errors import InputError


def test_scenes_from_a_folder_a_glob_a_manifest_and_a_list(tmp_path):
    for name in ("b.tif", "a.TIF", "notes.txt", ".hidden.tif"):
        (tmp_path / name).write_bytes(b"x")
    folder = list_scenes(str(tmp_path))
    assert [Path(p).name for p in folder] == ["a.TIF", "b.tif"]
    assert [Path(p).name for p in list_scenes(str(tmp_path / "*.tif"))] == ["b.tif"]
    manifest = tmp_path / "scenes.txt"
    manifest.write_text("# nightly\nb.tif\n/vsis3/bucket/c.tif\n\n")
    assert list_scenes(str(manifest)) == sorted([str(tmp_path / "b.tif"), "/vsis3/bucket/c.tif"])
    assert list_scenes(["x.tif", "x.tif"]) == ["x.tif"]
    with pytest.raises(InputError, match="not a folder, a manifest"):
        list_scenes(str(tmp_path / "missing"))


def test_two_scenes_with_one_stem_are_refused(tmp_path):
    assert output_paths(["/a/s.tif"], tmp_path)["/a/s.tif"] == tmp_path / "s.gpkg"
    with pytest.raises(InputError, match="would both write s.gpkg"):
        output_paths(["/a/s.tif", "/b/s.tif"], tmp_path)
    assert artifact_key("progress", "Scene_01.v2") == "progress-scene-01-v2"


class _Future:
    def __init__(self, value, log):
        self.value, self.log = value, log

    def result(self):
        self.log.append(("result", self.value))
        return self.value


def test_stream_in_order_bounds_in_flight_work_and_keeps_grid_order():
    log: list = []

    def submit(s):
        log.append(("submit", s))
        return _Future(s, log)

    out = list(stream_in_order(submit, [(0, 1), (1, 2), (2, 3), (3, 4)], max_in_flight=2))
    assert out == [(0, 1), (1, 2), (2, 3), (3, 4)]
    in_flight, peak = 0, 0
    for kind, _ in log:
        in_flight += 1 if kind == "submit" else -1
        peak = max(peak, in_flight)
    assert peak == 2


def test_a_worker_runs_torch_on_the_threads_its_environment_gives(monkeypatch):
    import torch

    from flows.segment import use_worker_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        use_worker_threads()
        assert torch.get_num_threads() == 3
        monkeypatch.delenv("OMP_NUM_THREADS")
        use_worker_threads()  # nothing given: left alone
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_the_flow_side_starts_without_importing_torch():
    """Planning and writing need no model: a deployment run's process starts about 4 s sooner without torch."""
    import subprocess
    import sys

    code = (
        "import sys, flows.segment, fpn_geo.pipeline; "
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
