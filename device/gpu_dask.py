"""The flows' worker path on a GPU: `process_blocks` on a `dask_cuda.LocalCUDACluster`, against `segment` in-process.

The Prefect flow (`flows/segment.py`) does exactly this under its tasks: plan on the client, groups of blocks
on workers that advertise GPU=1 and load the model once per process (`cached_segmenter`), block results
streamed in order into `SceneWriter`. This script runs that path without Prefect (the GPU machine has
no Prefect), so what it checks is the Dask-CUDA part: one worker per GPU, the GPU resource, CUDA inside a
worker process, and the same buildings as the single-process run on the same device.

Run through device/gpu.sh; `--cpu` smoke-tests it here on a LocalCluster (numbers meaningless).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def emit(**kw) -> dict:
    print(json.dumps(kw), flush=True)
    return kw


def worker_blocks(plan, blocks, checkpoint, device):
    from fpn_geo.pipeline import cached_segmenter, process_blocks

    return list(process_blocks(plan, blocks, cached_segmenter(checkpoint, device)))


def compare(a: Path, b: Path) -> dict:
    """Building counts and the share of building area that differs between two GeoPackages."""
    import geopandas as gpd

    ga, gb = gpd.read_file(a, layer="buildings"), gpd.read_file(b, layer="buildings")
    ua, ub = ga.union_all(), gb.union_all()
    area = max(ua.area, ub.area, 1e-12)
    return {"buildings_a": len(ga), "buildings_b": len(gb), "area_diff_share": ua.symmetric_difference(ub).area / area,
            "identical": len(ga) == len(gb) and bool(ga.geometry.sort_values().reset_index(drop=True).geom_equals(
                gb.geometry.sort_values().reset_index(drop=True)).all())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="smoke test on a CPU LocalCluster")
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--scene-side", type=int, default=8192)
    ap.add_argument("--blocks-per-task", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    if args.cpu:
        args.depth, args.batch, args.tile, args.scene_side = 18, 2, 256, 1024

    from distributed import Client

    from benchmarks import scenes
    from fpn_geo.config import load_config
    from fpn_geo.pipeline import SceneWriter, load_segmenter, plan_from_checkpoint, segment
    from fpn_geo.streaming import in_order
    from tests.doubles import make_checkpoint

    work = Path(args.workdir or tempfile.mkdtemp(prefix="fpn-geo-gpu-dask-"))
    work.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.cpu else "cuda"
    ckpt = work / "random.safetensors"
    if not ckpt.exists():
        make_checkpoint(ckpt, args.depth, like=REPO / "models" / "default.safetensors")
    scene = str(scenes.build_tiff(args.scene_side, args.scene_side, work, source=scenes.coarse_mosaic(4, work)))
    cfg = load_config(window=args.tile, overlap=64 if args.tile >= 256 else 32, batch=args.batch, device=device)

    seg = load_segmenter(ckpt, device)
    warm = __import__("numpy").zeros((cfg.batch, 3, cfg.window, cfg.window), "uint8")
    seg.predictor(warm, [None] * cfg.batch)
    t0 = time.perf_counter()
    ref = segment(scene, seg, work / "in_process.gpkg", cfg)
    ref_s = time.perf_counter() - t0
    emit(what="in-process", device=device, windows=ref.windows, buildings=ref.buildings, seconds=ref_s)

    t0 = time.perf_counter()
    if args.cpu:
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=":0",
                               resources={"GPU": 1})
    else:
        from dask_cuda import LocalCUDACluster

        cluster = LocalCUDACluster(host="127.0.0.1", dashboard_address=":0", resources={"GPU": 1})
    with cluster, Client(cluster) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        gpus = sum(1 for w in workers if (w.get("resources") or {}).get("GPU", 0) >= 1)
        start_s = time.perf_counter() - t0
        emit(what="cluster", kind=type(cluster).__name__, workers=len(workers), gpu_workers=gpus, start_s=start_s,
             visible_devices=client.run(lambda: __import__("os").environ.get("CUDA_VISIBLE_DEVICES")))
        # Warm the worker's model cache and CUDA context outside the timed run, as a long-lived cluster has.
        plan = plan_from_checkpoint(scene, ckpt, cfg)
        groups = plan.blocks.groups(args.blocks_per_task)
        client.submit(worker_blocks, plan, groups[0][:1], str(ckpt), device, pure=False, resources={"GPU": 1}).result()
        t1 = time.perf_counter()
        submit = lambda g: client.submit(worker_blocks, plan, g, str(ckpt), device, pure=False, resources={"GPU": 1})  # noqa: E731
        with SceneWriter(plan, work / "dask.gpkg") as writer:
            for results in in_order(submit, groups, 2 * max(1, len(workers))):
                for r in results:
                    writer.add(r)
            dist = writer.finish(t1, "bench")
        dist_s = time.perf_counter() - t1
        emit(what="dask", windows=dist.windows, predicted=dist.windows_predicted, tasks=len(groups),
             buildings=dist.buildings, seconds=dist_s, bytes_received=dist.bytes_received)
    emit(
        what="compare", **compare(work / "in_process.gpkg", work / "dask.gpkg"), ratio_dask_to_in_process=dist_s / ref_s
    )


if __name__ == "__main__":
    main()
