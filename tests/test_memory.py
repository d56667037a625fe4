"""Flat memory: no code path may hold an array the size of the scene.

The whole pipeline (read, predict, stitch, vectorize, GeoPackage) runs on a 16384x16384 VRT of the
real Kampala mosaic in a child process whose heap is capped with RLIMIT_DATA at what it holds after
imports plus DATA_BUDGET_MB. A full-scene float32 array would need 1024 MB, a full-scene uint8
mask 256 MB: both fail at once under the cap. RLIMIT_AS is not usable: torch's libraries alone
reserve ~4 GB of address space they never touch. The control test proves the cap bites.

The "model" is a cheap stand-in that marks one square building per window, so the test takes well
under a minute; building count and positions are checked so a silent no-op cannot pass.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIDE = 16384
# The default 4x4-window blocks (1792² px on the model's grid, labelled with 64 px of context: 1920²) fit under
# this cap at any scene size: a block's float sums (30 MB), its labels and the watershed's temporaries, the next
# block being blended meanwhile, GDAL cache 32, reader threads and their malloc arenas. Measured: passes at 360.
# Blocks of 8x8 windows need 550-800 MB here. A full-scene float32 array (1024 MB) breaks the cap alone.
DATA_BUDGET_MB = 400


def _vm_data_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmData in /proc/self/status")


class SquarePredictor:
    """One 96x96 building in the middle of each window; contact channel empty."""

    channels = 2

    def __call__(self, images, windows):
        import numpy as np

        n, _, size, _ = images.shape
        out = np.zeros((n, 2, size, size), np.uint8)
        c = size // 2
        out[:, 0, c - 48 : c + 48, c - 48 : c + 48] = 255
        return out


class FullSceneAllocator(SquarePredictor):
    """What the test must catch: a stitcher that keeps the whole scene's probabilities in RAM."""

    def __call__(self, images, windows):
        import numpy as np

        if not hasattr(self, "scene"):
            self.scene = np.zeros((SIDE, SIDE), np.float32)
        return super().__call__(images, windows)


def child(vrt: str, out: str, allocate_scene: bool) -> None:
    import fpn_geo.inference  # noqa: F401  (torch and the rest of the run's libraries, loaded before the cap:
    import fpn_geo.instances  # noqa: F401  the model's and the instance split's, which the pipeline imports lazily)
    from fpn_geo.config import load_config
    from fpn_geo.model.meta import ModelMeta
    from fpn_geo.pipeline import Segmenter, segment

    cfg = load_config(
        window=512, overlap=64, batch=8, probability="none", simplify_m=0.0, min_area_m2=1.0, gdal_cache_mb=32,
        device="cpu"
    )
    predictor = FullSceneAllocator() if allocate_scene else SquarePredictor()
    seg = Segmenter(predictor, ModelMeta(gsd_m=None))
    before = _vm_data_mb()
    limit = int((before + DATA_BUDGET_MB) * 2**20)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    summary = segment(vrt, seg, out, cfg)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {"buildings": summary.buildings, "windows": summary.windows, "vm_data_mb": before, "peak_rss_mb": peak_rss}
        )
    )


def run_child(tmp_path: Path, allocate_scene: bool) -> subprocess.CompletedProcess:
    sys.path.insert(0, str(REPO))
    from benchmarks.scenes import build_vrt

    vrt = build_vrt(SIDE, SIDE, tmp_path)
    return subprocess.run(
        [sys.executable, __file__, str(vrt), str(tmp_path / "out.gpkg"), "1" if allocate_scene else "0"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )


def test_16k_scene_runs_in_a_heap_far_below_one_full_scene_array(tmp_path):
    p = run_child(tmp_path, allocate_scene=False)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    offsets = range(0, SIDE, 448)  # 512 px windows, 64 px overlap: 37 per side
    assert res["windows"] == len(offsets) ** 2
    inside = sum(o + 256 - 48 < SIDE for o in offsets)  # the last windows' squares may fall off the scene
    assert res["buildings"] == inside**2  # one square per window, each whole though blocks cut it


def test_the_cap_catches_a_full_scene_array(tmp_path):
    p = run_child(tmp_path, allocate_scene=True)
    assert p.returncode != 0 and "MemoryError" in p.stderr, (p.returncode, p.stderr[-2000:])
    assert not (tmp_path / "out.gpkg").exists()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    child(sys.argv[1], sys.argv[2], sys.argv[3] == "1")
