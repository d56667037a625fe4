"""Orchestration overhead: the segment-scene flow on a Dask LocalCluster against the plain library/CLI path.

Same scene, same checkpoint, same config. Prints one JSON record:
- cli_cold_s: the command `fpn-geo segment` as a new process (interpreter, imports, model load, run);
- flow_cold_s: the command `python -m flows.segment scene --no-quicklook` as a new process against a running
  Prefect server: its own new LocalCluster (worker start, imports, model loads), then the run;
- flow_process_running_cluster_s: that command again, but on a running cluster (`--dask-address`): what a
  deployment run costs when a Dask cluster is kept up (the compose stack, FPN_GEO_DASK_ADDRESS);
- cli_s: `segment()` in this process (the CLI's work without interpreter start-up);
- flow_warm_s: the flow on an already running cluster (workers imported, models cached);
- flow_warm_no_quicklook_s: the same without the quicklook picture, which the CLI does not draw;
- task_runs: Prefect task runs per scene (plan-scene + process-blocks + quicklook);
- submit_ms: per-submit cost of a no-op task through DaskTaskRunner (orchestration only).

    python benchmarks/flow_vs_cli.py [--scene data/kampala_oam/mosaic_z20_6x4_1536x1024.tif] [--workers N]

A random-weights ResNet-18 is made when no --checkpoint is given (timing does not depend on the weights).
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


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--scene", default=str(REPO / "data/kampala_oam/mosaic_z20_6x4_1536x1024.tif"))
    p.add_argument("--checkpoint")
    p.add_argument("--workers", type=int, help="local workers (default: the flows' default cluster shape)")
    p.add_argument("--submits", type=int, default=50)
    args = p.parse_args()

    import torch
    from distributed import LocalCluster
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness
    from prefect_dask import DaskTaskRunner

    from flows.cluster import task_runner
    from flows.segment import segment_scene
    from fpn_geo.config import load_config
    from fpn_geo.pipeline import load_segmenter, segment

    tmp = Path(tempfile.mkdtemp(prefix="fpn-geo-bench-"))
    ckpt = args.checkpoint
    if not ckpt:
        from tests.doubles import make_checkpoint

        ckpt = str(make_checkpoint(tmp / "r18.safetensors", 18))
    shape = task_runner(n_workers=args.workers).cluster_kwargs
    record: dict = {
        "scene": args.scene,
        "workers": shape["n_workers"],
        "worker_torch_threads": int(shape["env"]["OMP_NUM_THREADS"]),
        "cpu_threads_cli": torch.get_num_threads(),
    }

    def timed(cmd: list[str], **env: str) -> float:
        t = time.perf_counter()
        subprocess.run(
            cmd, check=True, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        return round(time.perf_counter() - t, 2)

    bindir = Path(sys.executable).parent
    # Untimed: bring the libraries into the page cache, so the first timed command does not pay for it alone.
    timed([sys.executable, "-c", "import torch, rasterio, geopandas, prefect, distributed, fpn_geo.pipeline"])
    record["cli_cold_s"] = timed(
        [str(bindir / "fpn-geo"), "segment", args.scene, "--model", ckpt, "--out", str(tmp / "cli_cold.gpkg"), "-q"]
    )
    t = time.perf_counter()
    summary = segment(args.scene, load_segmenter(ckpt, "auto"), tmp / "cli.gpkg", load_config())
    record["cli_s"] = round(time.perf_counter() - t, 2)
    record["windows"] = summary.windows

    with prefect_test_harness(server_startup_timeout=60):
        workers = ["--dask-workers", str(args.workers)] if args.workers else []
        record["flow_cold_s"] = timed(
            [sys.executable, "-m", "flows.segment", *workers, "--no-quicklook", "scene", args.scene,
             "--checkpoint", ckpt, "--out", str(tmp / "cold.gpkg")], PREFECT_API_URL=PREFECT_API_URL.value())
        shape = dict(task_runner(n_workers=args.workers).cluster_kwargs)  # the same workers as the cold run
        shape.update(dashboard_address=None, env={**shape.get("env", {}), "PREFECT_API_URL": PREFECT_API_URL.value()})
        with LocalCluster(**shape) as cluster:
            warm = segment_scene.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
            warm(scene=args.scene, checkpoint=ckpt, out=str(tmp / "warmup.gpkg"))  # imports + model load
            t = time.perf_counter()
            r = warm(scene=args.scene, checkpoint=ckpt, out=str(tmp / "warm.gpkg"))
            record["flow_warm_s"] = round(time.perf_counter() - t, 2)
            record["task_runs"] = r["tasks"] + 2
            t = time.perf_counter()  # the quicklook is extra work the CLI does not do: time the flow without it too
            warm(scene=args.scene, checkpoint=ckpt, out=str(tmp / "warm_noql.gpkg"), quicklook=False)
            record["flow_warm_no_quicklook_s"] = round(time.perf_counter() - t, 2)
            record["flow_process_running_cluster_s"] = timed(
                [sys.executable, "-m", "flows.segment", "--dask-address", cluster.scheduler_address, "--no-quicklook",
                 "scene", args.scene, "--checkpoint", ckpt, "--out", str(tmp / "process_warm.gpkg")],
                PREFECT_API_URL=PREFECT_API_URL.value())

            @task(cache_policy=NO_CACHE)
            def noop(i: int) -> int:
                return i

            @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
            def submits(n: int) -> float:
                t0 = time.perf_counter()
                futures = [noop.submit(i) for i in range(n)]
                [f.result() for f in futures]
                return (time.perf_counter() - t0) / n

            record["submit_ms"] = round(1000 * submits(args.submits), 1)
    record["cold_overhead_pct"] = round(100 * (record["flow_cold_s"] / record["cli_cold_s"] - 1), 1)
    record["process_running_cluster_overhead_pct"] = round(
        100 * (record["flow_process_running_cluster_s"] / record["cli_cold_s"] - 1), 1
    )
    record["warm_overhead_pct"] = round(100 * (record["flow_warm_s"] / record["cli_s"] - 1), 1)
    record["warm_no_quicklook_overhead_pct"] = round(
        100 * (record["flow_warm_no_quicklook_s"] / record["cli_s"] - 1), 1
    )
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
