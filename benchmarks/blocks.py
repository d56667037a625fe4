"""The block pipeline's numbers (issue 9), each a ratio measured in this one run on the same input:

    python benchmarks/blocks.py              # all rows, ~15 minutes on 2 cores
    python benchmarks/blocks.py --rows e2e   # some rows: e2e post rss flow workers

- e2e: `segment` end to end (probability COG included) against model-only (the same windows in the same batches,
  read beforehand, only the predictor timed), bundled model, on the 7.5 cm Kampala mosaic and on an 8192² scene at
  0.30 m (the mosaic averaged 4x and tiled). Each side loads the model untimed, then times `--passes` passes: the
  first pays the post-processing libraries' imports (scipy, skimage: about 0.2 s) and torch's first-call set-up.
- post: post-processing throughput per stage with the oracle "model" (rasterized truth), the stages in turn in one
  thread, in model-grid megapixels per second, 8192² at 0.30 m.
- rss: peak RSS of `segment` (bundled model) on 2048² and 8192² Kampala-derived 7.5 cm scenes, each in its own process,
  `--repeat` times each (median: one run's peak varies by about +-50 MB).
- workers: `segment` with the oracle, 8192² at 0.30 m, 2 post workers as threads and as processes (post_workers).
- flow: the flow's worker path on a Dask LocalCluster of 1 and of 2 single-thread workers, oracle model, 8192² at
  0.30 m, no probability COG: blocks processed on the workers, results joined and written here. Also the bytes the
  writer received against the size of the uint8 probability raster it no longer receives.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import scenes  # noqa: E402

MODEL = REPO / "models" / "default.safetensors"


def _cfg(**kw):
    from fpn_geo.config import load_config

    return load_config(device="cpu", **kw)


def _oracle_segmenter(scene_path: str, source: str):
    from tests.doubles import oracle_segmenter

    return oracle_segmenter(scene_path, scenes.scene_labels(scene_path, Path(source)))


# ---------------------------------------------------------------- children (one measurement each, own process)


def child_e2e(job: dict, out: Path) -> dict:
    from fpn_geo.pipeline import load_segmenter, segment

    if job.get("oracle"):
        seg = _oracle_segmenter(job["scene"], job["source"])
    else:
        seg = load_segmenter(job["checkpoint"], "cpu")
    passes = []
    for _ in range(job.get("passes", 1)):
        t0 = time.perf_counter()
        s = segment(job["scene"], seg, out / "o.gpkg", _cfg(**job.get("cfg", {})))
        passes.append(time.perf_counter() - t0)
    return {"seconds": passes[0], "passes": passes, "times": s.times, "windows": s.windows,
            "predicted": s.windows_predicted, "buildings": s.buildings, "bytes": s.bytes_received}


def child_model_only(job: dict, out: Path) -> dict:
    import numpy as np

    from fpn_geo.inference import read_batches
    from fpn_geo.pipeline import load_segmenter, plan_scene
    from fpn_geo.timing import StageTimes

    seg = load_segmenter(job["checkpoint"], "cpu")
    cfg = _cfg(**job.get("cfg", {}))
    plan = plan_scene(job["scene"], seg.meta, cfg)
    passes, with_reading = [], []
    for _ in range(job.get("passes", 1)):
        model, n, t0 = 0.0, 0, time.perf_counter()
        batches = read_batches(plan.scene.path, plan.grid, seg.meta.bands, cfg.window, plan.scale, cfg.batch,
                               StageTimes(), grid_hw=plan.grid_hw)
        for _, data in batches:
            if data:
                images, wins = np.stack([d.image for d in data]), [d.window for d in data]
                t = time.perf_counter()
                seg.predictor(images, wins)
                model += time.perf_counter() - t
                n += len(data)
        passes.append(model)
        with_reading.append(time.perf_counter() - t0)
    return {"seconds": passes[0], "passes": passes, "read_and_model": with_reading[0], "windows": n,
            "grid_mpx": plan.grid.height * plan.grid.width / 1e6}


def child_flow(job: dict, out: Path) -> dict:
    """The flow's data path without Prefect: plan here, process_blocks on Dask workers, SceneWriter here."""
    from distributed import Client, LocalCluster

    from fpn_geo.pipeline import SceneWriter, plan_scene, process_blocks

    seg = _oracle_segmenter(job["scene"], job["source"])
    cfg = _cfg(probability="none", **job.get("cfg", {}))
    plan = plan_scene(job["scene"], seg.meta, cfg)

    def work(block):
        import benchmarks.blocks as b

        if not hasattr(b, "_seg"):
            b._seg = b._oracle_segmenter(job["scene"], job["source"])
        return next(iter(process_blocks(plan, [block], b._seg)))

    with LocalCluster(n_workers=job["workers"], threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1", env={"PYTHONPATH": str(REPO)}) as cluster, Client(cluster) as client:
        client.run(lambda: __import__("benchmarks.blocks"))
        warm = [
            client.submit(work, b, pure=False, workers=[w])
            for b, w in zip(list(plan.blocks)[:1] * job["workers"], client.scheduler_info()["workers"])
        ]
        client.gather(warm)  # oracle built on every worker before the clock starts
        t0 = time.perf_counter()
        futures = [client.submit(work, b, pure=False) for b in plan.blocks]
        with SceneWriter(plan, out / "o.gpkg") as writer:
            for f in futures:  # block order, as the flow consumes them
                writer.add(f.result())
            s = writer.finish(t0, "bench")
    g = plan.grid
    return {"seconds": time.perf_counter() - t0, "buildings": s.buildings, "bytes": s.bytes_received,
            "raster_bytes": plan.channels * g.height * g.width, "blocks": len(plan.blocks), "times": s.times}


def child_post(job: dict, out: Path) -> dict:
    """Post-processing stage by stage with nothing beside it: blend then finish each block in this one thread (in
    `segment` a thread finishes block k while this one blends k+1, and on 2 cores they share the GIL, which
    inflates both stages' wall times), then the writer."""
    from fpn_geo.blocks import BlockResult, HaloCache, blend_block, finish_block
    from fpn_geo.plan import plan_scene
    from fpn_geo.scene_writer import SceneWriter
    from fpn_geo.timing import StageTimes

    seg = _oracle_segmenter(job["scene"], job["source"])
    plan = plan_scene(job["scene"], seg.meta, _cfg(**job.get("cfg", {})))
    blocks = list(plan.blocks)
    cache, times = HaloCache(plan, blocks), StageTimes()
    t0 = time.perf_counter()
    with SceneWriter(plan, out / "o.gpkg") as writer:
        for block in blocks:
            probs, nodata, predicted = blend_block(plan, block, seg, cache, times)
            buildings, edges, tile, post_times = finish_block(plan, block, probs, True)
            times.add(post_times)
            writer.add(BlockResult(block, buildings, edges, tile, nodata, predicted, "cpu"))
        s = writer.finish(t0, "bench")
    return {"seconds": time.perf_counter() - t0, "times": {**times, **s.times}, "buildings": s.buildings,
            "grid_mpx": plan.grid.height * plan.grid.width / 1e6}


CHILDREN = {"e2e": child_e2e, "model-only": child_model_only, "flow": child_flow, "post": child_post}


def measure(job: dict) -> dict:
    """One job in a fresh interpreter; its peak RSS from os.wait4."""
    p = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(job)], stdout=subprocess.PIPE, cwd=REPO)
    out = p.stdout.read().decode()
    _, status, ru = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{job} failed")
    res = json.loads(out.strip().splitlines()[-1])
    res["peak_rss_mb"] = ru.ru_maxrss / 1024
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", default=["e2e", "post", "rss", "flow"],
                    choices=["e2e", "post", "rss", "flow", "workers"])
    ap.add_argument("--side", type=int, default=8192, help="side of the 0.30 m scene")
    ap.add_argument("--rss-sides", type=int, nargs="+", default=[2048, 8192], help="rss row: 7.5 cm scene sides")
    ap.add_argument("--repeat", type=int, default=2,
                    help="e2e rows: pairs of (e2e, model-only) runs; rss: runs per side")
    ap.add_argument("--e2e-scenes", nargs="+", default=["kampala", "big"], choices=["kampala", "big"])
    ap.add_argument("--passes", type=int, default=1,
                    help="e2e rows: passes over the scene in each process; pass 2 on pays no imports or first-call "
                         "set-up (what a worker serving many scenes sees)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for the rss row, e.g. gdal_cache_mb=64 (YAML values)")
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        job = json.loads(args.child)
        with tempfile.TemporaryDirectory(prefix="fpn-geo-bench-") as d:
            print(json.dumps(CHILDREN[job.pop("kind")](job, Path(d))))
        return

    import yaml

    overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    coarse = scenes.coarse_mosaic(4)
    big = scenes.build_tiff(args.side, source=coarse)
    print(f"# {os.cpu_count()} CPUs; 0.30 m scene {big} ({args.side}²); model {MODEL.name}", flush=True)
    results = {}
    if "e2e" in args.rows:
        e2e_scenes = {"kampala": ("Kampala 7.5 cm 3072x2048", scenes.MOSAIC), "big": (f"{args.side}² at 0.30 m", big)}
        for label, scene in (e2e_scenes[k] for k in args.e2e_scenes):
            pairs = []
            for _ in range(args.repeat):  # interleaved, so a noisy neighbour hits both sides alike
                job = {"scene": str(scene), "checkpoint": str(MODEL), "passes": args.passes}
                e2e = measure({"kind": "e2e", **job})
                only = measure({"kind": "model-only", **job})
                pairs.append((e2e, only))
                stages = " ".join(f"{k} {v:.2f}" for k, v in e2e["times"].items())
                later = "".join(
                    f"; pass {i + 1} in the same process: {e:.2f} / {o:.2f} s = {e / o:.3f}"
                    for i, (e, o) in enumerate(zip(e2e["passes"], only["passes"])) if i
                )
                print(f"e2e {label}: {e2e['seconds']:.2f} s ({e2e['windows']} windows, {e2e['predicted']} predicted, "
                      f"{e2e['buildings']} buildings) / model-only {only['seconds']:.2f} s = "
                      f"{e2e['seconds'] / only['seconds']:.3f}; "
                      f"/ read+model {only['read_and_model']:.2f} s = {e2e['seconds'] / only['read_and_model']:.3f}"
                      f"{later}  [last pass: {stages}]", flush=True)
            best_e2e = min(p[0]["seconds"] for p in pairs)
            best_only = min(p[1]["seconds"] for p in pairs)
            print(f"e2e {label}: fastest e2e {best_e2e:.1f} s / fastest model-only {best_only:.1f} s = "
                  f"{best_e2e / best_only:.3f}", flush=True)
            results[f"e2e {label}"] = [{"e2e": e, "model_only": o} for e, o in pairs]
    if "post" in args.rows:
        r = measure({"kind": "post", "scene": str(big), "source": str(coarse)})
        results["post"] = r
        per = ", ".join(
            f"{k} {r['grid_mpx'] / v:.0f}" for k, v in r["times"].items()
            if k not in ("model", "read", "hash") and v > 0
        )
        print(f"post-processing, oracle, {args.side}² at 0.30 m, one thread, stages in turn, model-grid Mpx/s per "
              f"stage: {per}; {r['buildings']} buildings, {r['seconds']:.1f} s", flush=True)
    if "workers" in args.rows:
        runs = {}
        for kind in ("threads", "processes"):
            cfg = {"post_threads": 2, "post_workers": kind, "probability": "none"}
            runs[kind] = measure({"kind": "e2e", "scene": str(big), "source": str(coarse), "oracle": True, "cfg": cfg})
        results["workers"] = runs
        t, p = runs["threads"], runs["processes"]
        print(f"post_workers, oracle, {args.side}² at 0.30 m, 2 post workers, no COG: threads {t['seconds']:.1f} s, "
              f"processes {p['seconds']:.1f} s (x{t['seconds'] / p['seconds']:.2f}); same buildings "
              f"{t['buildings'] == p['buildings']} ({p['buildings']})", flush=True)
    if "rss" in args.rows:
        rss: dict = {side: [] for side in args.rss_sides}
        for _ in range(args.repeat):  # interleaved; peak RSS varies by +-50 MB run to run (thread timing, arenas)
            for side in args.rss_sides:
                rss[side].append(measure({"kind": "e2e", "scene": str(scenes.build_tiff(side)),
                                          "checkpoint": str(MODEL), "cfg": overrides}))
        results["rss"] = rss
        first = args.rss_sides[0]
        med = {side: statistics.median(r["peak_rss_mb"] for r in runs) for side, runs in rss.items()}
        print("peak RSS, bundled model, 7.5 cm, median of " + str(args.repeat) + ": " + ", ".join(
            f"{side}² {med[side]:.0f} MB (x{med[side] / med[first]:.3f}; runs "
            + " ".join(f"{r['peak_rss_mb']:.0f}" for r in rss[side]) + ")" for side in rss), flush=True)
    if "flow" in args.rows:
        flow = {w: measure({"kind": "flow", "scene": str(big), "source": str(coarse), "workers": w}) for w in (1, 2)}
        results["flow"] = flow
        f2 = flow[2]
        print(f"flow path, oracle, {args.side}² at 0.30 m, {f2['blocks']} blocks: 1 worker {flow[1]['seconds']:.1f} s, "
              f"2 workers {f2['seconds']:.1f} s, speed-up {flow[1]['seconds'] / f2['seconds']:.2f}; same buildings "
              f"{flow[1]['buildings'] == f2['buildings']} ({f2['buildings']}); bytes received {f2['bytes'] / 1e6:.2f} "
              "MB = "
              f"{f2['bytes'] / f2['raster_bytes']:.4f} of the 2-band uint8 probability raster "
              f"({2 * f2['bytes'] / f2['raster_bytes']:.4f} of one band)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
