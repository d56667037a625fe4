"""fpn-geo against the naive baseline, same machine, same run: one table.

    python benchmarks/run.py --quick          # < 3 min on 2 cores: overhead (oracle) 2k²/8k², model (R18) 1k², vector 25k
    python benchmarks/run.py                  # overhead 2k², 8k², 16k², 8k² nodata; model on the 3072x2048 mosaic; vector 100k
    python benchmarks/run.py --modes vector   # one mode: overhead, model, vector

Every pipeline runs in its own child process; peak RSS is that child's ru_maxrss (os.wait4), the
same number GNU `time -v` prints. Modes:

- overhead: the oracle "model" (rasterized labels, ~free) in place of the network, so the table
  shows the pipeline's own cost and memory: read, stitch, vectorize, write.
- model: the real default model (models/default.safetensors) if present, else a random-weights
  ResNet-50 FPN (ResNet-18 with --quick), labelled "random": its buildings mean nothing, its time
  is real. The full run's model rows on the 3072x2048 mosaic are the issue-2 measurement. Adds a
  "model-only" row: the same windows, same batches, read beforehand, only the model timed.
- vector: vectorization + GeoPackage write of a synthetic probability raster with ~100k buildings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import scenes  # noqa: E402

DEFAULT_MODEL = REPO / "models" / "default.safetensors"
STAGES = ("read", "model", "stitch", "vectorize", "write", "hash")


# ---------------------------------------------------------------- children: one pipeline each


def _config(job: dict):
    from fpn_geo.config import load_config

    return load_config(window=job.get("window", 512), overlap=job.get("overlap", 64), batch=job.get("batch"), device="cpu")


def _oracle(scene_path: str):
    import rasterio

    from fpn_geo.oracle import OraclePredictor

    with rasterio.open(scene_path) as src:
        transform = src.transform
    return OraclePredictor(scenes.scene_labels(scene_path), transform)


def child_ours(job: dict, out: Path) -> dict:
    from fpn_geo.pipeline import Segmenter, load_segmenter, segment

    if job["mode"] == "overhead":
        seg = Segmenter(_oracle(job["scene"]), bands=(1, 2, 3), channels=2)
    else:
        seg = load_segmenter(job["checkpoint"], "cpu")
    t0 = time.perf_counter()
    s = segment(job["scene"], seg, out / "ours.gpkg", _config(job))
    return {"seconds": time.perf_counter() - t0, "buildings": s.buildings, "times": s.times, "windows": s.windows}


def child_baseline(job: dict, out: Path) -> dict:
    from benchmarks import baseline

    if job["mode"] == "overhead":
        predict, bands = baseline.oracle_predictor(_oracle(job["scene"])), (1, 2, 3)
    else:
        predict, bands = baseline.torch_predictor(job["checkpoint"])
    cfg = _config(job)
    return baseline.run_baseline(job["scene"], predict, bands, out / "baseline.gpkg", cfg.window, cfg.overlap, cfg.threshold, cfg.min_area_m2)


def child_model_only(job: dict, out: Path) -> dict:
    """The same windows in the same batches as `segment`, read first; only the predictor is timed."""
    import numpy as np
    import rasterio

    from fpn_geo.inference import read_batches
    from fpn_geo.timing import StageTimes
    from fpn_geo.pipeline import load_segmenter, plan_grid
    from fpn_geo.scene import open_scene

    seg = load_segmenter(job["checkpoint"], "cpu")
    cfg = _config(job)
    scene = open_scene(job["scene"], seg.bands)
    grid, scale = plan_grid(scene, cfg, seg.gsd_m)
    model = 0.0
    n = 0
    with rasterio.Env(GDAL_CACHEMAX=cfg.gdal_cache_mb * 1024 * 1024):
        for _, data in read_batches(scene.path, grid, seg.bands, cfg.window, scale, cfg.batch, StageTimes()):
            if not data:
                continue
            images, wins = np.stack([d.image for d in data]), [d.window for d in data]
            t0 = time.perf_counter()
            seg.predictor(images, wins)
            model += time.perf_counter() - t0
            n += len(data)
    return {"seconds": model, "buildings": None, "times": {"model": model}, "windows": n}


def child_vector(job: dict, out: Path) -> dict:
    """Ours: strip polygonize + to_buildings + GeoPackage appends, as pipeline.vectorize_to does."""
    from fpn_geo.config import load_config
    from fpn_geo.geopackage import GeoPackageWriter
    from fpn_geo.timing import StageTimes
    from fpn_geo.pipeline import choose_labeler, vectorize_to
    from fpn_geo.scene import open_scene

    cfg = load_config()
    scene = open_scene(job["scene"])
    times = StageTimes()
    t0 = time.perf_counter()
    with GeoPackageWriter(out / "vector.gpkg", scene.crs) as writer:
        vectorize_to(Path(job["scene"]), scene, cfg, choose_labeler(2, cfg), writer, times)
        writer.commit({"run_id": "bench"})
        n = writer.count
    return {"seconds": time.perf_counter() - t0, "buildings": n, "times": dict(times), "windows": None}


def child_vector_baseline(job: dict, out: Path) -> dict:
    """Naive: whole mask in RAM, rasterio.features.shapes, GeoDataFrame.to_file."""
    import geopandas as gpd
    import numpy as np
    import rasterio
    import rasterio.features
    import shapely

    t0 = time.perf_counter()
    with rasterio.open(job["scene"]) as src:
        mask = (src.read(1) >= 128).astype(np.uint8)
        transform, crs = src.transform, src.crs
    geoms = [shapely.geometry.shape(g) for g, v in rasterio.features.shapes(mask, mask=mask > 0, transform=transform) if v == 1]
    gdf = gpd.GeoDataFrame({"id": np.arange(len(geoms))}, geometry=geoms, crs=crs)
    gdf = gdf[gdf.area >= 4.0]
    a = time.perf_counter()
    gdf.to_file(out / "vector_baseline.gpkg", layer="buildings", driver="GPKG")
    w = time.perf_counter() - a
    total = time.perf_counter() - t0
    return {"seconds": total, "buildings": len(gdf), "times": {"vectorize": total - w, "write": w}, "windows": None}


CHILDREN = {"ours": child_ours, "baseline": child_baseline, "model-only": child_model_only,
            "ours-vector": child_vector, "baseline-vector": child_vector_baseline}


def run_child(job: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="fpn-geo-bench-") as d:
        res = CHILDREN[job["pipeline"]](job, Path(d))
    return res


# ---------------------------------------------------------------- parent: spawn, measure, print


GNU_TIME = "/usr/bin/time"


def measure(job: dict) -> dict:
    """Run one job in a fresh interpreter; wall time from outside, peak RSS as GNU `time -v` reports it.

    Without /usr/bin/time, the child's own rusage (os.wait4) gives the same ru_maxrss.
    """
    cmd = [sys.executable, __file__, "--child", json.dumps(job)]
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        gnu = os.path.exists(GNU_TIME)
        if gnu:
            cmd = [GNU_TIME, "-v", "-o", tf.name, *cmd]
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=REPO)
        out = p.stdout.read().decode()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise SystemExit(f"{job['pipeline']} on {job['scene']} failed with exit {code}")
        rss_kb = ru.ru_maxrss
        if gnu:
            for line in tf.read().splitlines():
                if "Maximum resident set size" in line:
                    rss_kb = int(line.split(":")[1])
    res = json.loads(out.strip().splitlines()[-1])
    res.update(job=job, process_wall=wall, peak_rss_mb=rss_kb / 1024, rss_source="GNU time -v" if gnu else "wait4")
    return res


def default_checkpoint(cache: Path, depth: int = 50, force_random: bool = False) -> tuple[str, str]:
    """(path, label): the trained default model, else (or if forced) a random-weights ResNet-`depth` FPN."""
    if DEFAULT_MODEL.is_file() and not force_random:
        return str(DEFAULT_MODEL), "default model"
    path = cache / f"random_r{depth}.safetensors"
    if not path.is_file():
        import torch

        from fpn_geo.model import ModelMeta, build_model, save_checkpoint

        torch.manual_seed(0)
        meta = ModelMeta(depth=depth, bands=(1, 2, 3))
        save_checkpoint(build_model(meta), meta, path)
    return str(path), f"R{depth} FPN random weights"


def synthetic_probability(n: int, cache: Path) -> Path:
    """A 2-band probability GeoTIFF (footprint, contact) with about n buildings in UTM 36N at 0.5 m.

    Buildings are rotated rectangles and L-shapes of 4-12 m, on a jittered 32-px grid; one pair
    in ten touches its neighbour, with a contact band between them, so the watershed has work to do.
    """
    import numpy as np
    import rasterio
    import rasterio.features
    import shapely
    from affine import Affine

    side = int(np.ceil(np.sqrt(n))) * 32
    path = cache / f"synthetic_{n}_{side}.tif"
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    transform = Affine(0.5, 0, 450000, 0, -0.5, 40000)
    k = side // 32
    cy, cx = np.mgrid[0:k, 0:k].reshape(2, -1) * 32 + 16
    cy = cy + rng.integers(-3, 4, cy.size)
    cx = cx + rng.integers(-3, 4, cx.size)
    w = rng.uniform(8, 22, cx.size)
    h = rng.uniform(8, 22, cx.size)
    boxes = shapely.box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    ell = rng.random(cx.size) < 0.3
    cut = shapely.box(cx, cy, cx + w / 2, cy + h / 2)
    boxes[ell] = shapely.difference(boxes[ell], cut[ell])
    angle = rng.uniform(-30, 30, cx.size)
    geoms = [shapely.affinity.rotate(g, a, origin=(x, y)) for g, a, x, y in zip(boxes, angle, cx, cy)]
    foot = np.zeros((side, side), np.uint8)
    contact = np.zeros((side, side), np.uint8)
    for i in range(0, len(geoms), 20000):
        rasterio.features.rasterize(((g, 230) for g in geoms[i : i + 20000]), out=foot, all_touched=False)
    touch = rng.random(cx.size) < 0.1  # bridge to the right-hand neighbour: two buildings that touch
    bridges = [shapely.box(x, y - 3, x + 32, y + 3) for x, y in zip(cx[touch], cy[touch])]
    seams = [shapely.box(x + 14, y - 4, x + 18, y + 4) for x, y in zip(cx[touch], cy[touch])]
    if bridges:
        rasterio.features.rasterize(((g, 230) for g in bridges), out=foot)
        rasterio.features.rasterize(((g, 255) for g in seams), out=contact)
    profile = dict(driver="GTiff", width=side, height=side, count=2, dtype="uint8", crs="EPSG:32636", transform=transform,
                   tiled=True, blockxsize=512, blockysize=512, compress="deflate")
    tmp = path.with_name(path.name + ".tmp")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(np.stack([foot, contact]))
    os.replace(tmp, path)
    return path


def plan(args) -> list[tuple[str, str, dict]]:
    """(mode, scene label, job) in run order."""
    cache = scenes.CACHE
    jobs = []
    if "overhead" in args.modes:
        sizes = args.sizes or ([2048, 8192] if args.quick else [2048, 8192, 16384])
        todo = [(f"{s}²", scenes.scene(s)) for s in sizes]
        if not args.quick and args.nodata:
            todo.append((f"{args.nodata}² nodata", scenes.scene(args.nodata, "nodata")))
        for label, sc in todo:
            for pipe in ("ours", "baseline"):
                jobs.append(("overhead (oracle)", label, dict(pipeline=pipe, mode="overhead", scene=str(sc.path), mpx=sc.megapixels)))
    if "model" in args.modes:
        ckpt, name = default_checkpoint(cache, args.random_depth or (18 if args.quick else 50), bool(args.random_depth))
        if args.quick:
            sc, label = scenes.build_tiff(1024), "1024²"
            mpx = 1024 * 1024 / 1e6
        else:
            sc, label, mpx = scenes.MOSAIC, "mosaic 3072x2048", 3072 * 2048 / 1e6
        for pipe in ("ours", "model-only", "baseline"):
            jobs.append((f"model ({name})", label, dict(pipeline=pipe, mode="model", scene=str(sc), checkpoint=ckpt, mpx=mpx)))
    if "vector" in args.modes:
        n = args.buildings or (25_000 if args.quick else 100_000)
        path = synthetic_probability(n, cache)
        side = int(path.stem.split("_")[-1])
        for pipe in ("ours-vector", "baseline-vector"):
            jobs.append(("vector + write", f"~{n // 1000}k bldg {side}²", dict(pipeline=pipe, mode="vector", scene=str(path), mpx=side * side / 1e6)))
    return jobs


def shares(times: dict) -> str:
    total = sum(times.get(s, 0.0) for s in STAGES)
    if not total:
        return ""
    return " ".join(f"{s} {100 * times[s] / total:.0f}%" for s in STAGES if times.get(s, 0.0) / total >= 0.005)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small scenes only: < 3 minutes on 2 cores")
    ap.add_argument("--modes", nargs="+", default=["overhead", "model", "vector"], choices=["overhead", "model", "vector"])
    ap.add_argument("--sizes", nargs="+", type=int, help="overhead-mode scene sides (default 2048 8192 16384)")
    ap.add_argument("--nodata", type=int, default=8192, help="side of the nodata-collar scene in overhead mode (0: none)")
    ap.add_argument("--buildings", type=int, help="vector mode: how many synthetic buildings (default 100k, quick 25k)")
    ap.add_argument("--random-depth", type=int, choices=[18, 34, 50, 101],
                    help="model mode: a random-weights ResNet-N FPN even when the default model exists (issue 2: 50)")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return

    t_all = time.perf_counter()
    jobs = plan(args)
    import torch

    print(f"# fpn-geo benchmarks: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; scenes in {scenes.CACHE}")
    header = f"{'mode':<34} {'scene':<18} {'pipeline':<15} {'wall s':>7} {'Mpx/s':>7} {'peak RSS MB':>11} {'buildings':>9}  stage shares (ours)"
    print(header)
    print("-" * len(header))
    results = []
    for mode, label, job in jobs:
        r = measure(job)
        results.append(r)
        secs = r["seconds"]
        mpxs = job["mpx"] / secs if secs else 0.0
        b = "" if r["buildings"] is None else r["buildings"]
        extra = shares(r["times"]) if job["pipeline"] in ("ours", "ours-vector") else ""
        if job["pipeline"] == "model-only":
            ours = next(x for x in results[::-1] if x["job"]["pipeline"] == "ours" and x["job"]["mode"] == "model")
            extra = f"ours / model-only = {ours['seconds'] / secs:.3f}"
        print(f"{mode:<34} {label:<18} {job['pipeline']:<15} {secs:7.1f} {mpxs:7.2f} {r['peak_rss_mb']:11.0f} {b!s:>9}  {extra}", flush=True)
    print(f"# total {time.perf_counter() - t_all:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
