"""fpn-geo against the naive baseline, same machine, same run: one table.

    python benchmarks/run.py --quick          # < 3 min on 2 cores: overhead (oracle) 2k²/8k², model (R18) 1k²
    python benchmarks/run.py                  # overhead 2k², 8k², 16k², 8k² nodata; model on the 3072x2048 mosaic
    python benchmarks/run.py --modes model    # one mode: overhead, model

Every pipeline runs in its own child process; peak RSS is that child's ru_maxrss (os.wait4), the
same number GNU `time -v` prints. Modes:

- overhead: the oracle "model" (rasterized labels, ~free) in place of the network, so the table
  shows the pipeline's own cost and memory: read, stitch, vectorize, write.
- model: the real default model (models/default.safetensors) if present, else a random-weights
  ResNet-50 FPN (ResNet-18 with --quick), labelled "random": its buildings mean nothing, its time
  is real. The full run's model rows on the 3072x2048 mosaic are the issue-2 measurement. Adds a
  "model-only" row: the same windows, same batches, read beforehand, only the model timed.

The block pipeline's own ratios (post-processing per stage, flow scaling, bytes received) are in blocks.py.
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
STAGES = ("read", "model", "blend", "label", "trace", "polygons", "encode", "join", "write", "cog", "hash")


# ---------------------------------------------------------------- children: one pipeline each


def _config(job: dict):
    from fpn_geo.config import load_config

    return load_config(
        window=job.get("window", 512), overlap=job.get("overlap", 64), batch=job.get("batch"), device="cpu"
    )


def _oracle(scene_path: str):
    from tests.doubles import oracle_segmenter

    return oracle_segmenter(scene_path, scenes.scene_labels(scene_path))


def child_ours(job: dict, out: Path) -> dict:
    from fpn_geo.pipeline import load_segmenter, segment

    if job["mode"] == "overhead":
        seg = _oracle(job["scene"])
    else:
        seg = load_segmenter(job["checkpoint"], "cpu")
    t0 = time.perf_counter()
    s = segment(job["scene"], seg, out / "ours.gpkg", _config(job))
    return {"seconds": time.perf_counter() - t0, "buildings": s.buildings, "times": s.times, "windows": s.windows}


def child_baseline(job: dict, out: Path) -> dict:
    from benchmarks import baseline

    if job["mode"] == "overhead":
        predict, bands = baseline.oracle_predictor(_oracle(job["scene"]).predictor), (1, 2, 3)
    else:
        predict, bands = baseline.torch_predictor(job["checkpoint"])
    cfg = _config(job)
    return baseline.run_baseline(
        job["scene"], predict, bands, out / "baseline.gpkg", cfg.window, cfg.overlap, cfg.threshold, cfg.min_area_m2
    )


def child_model_only(job: dict, out: Path) -> dict:
    """The same windows in the same batches as `segment`, read first; only the predictor is timed."""
    from benchmarks.blocks import child_model_only as model_only

    return {**model_only({**job, "cfg": {"window": job.get("window", 512), "overlap": job.get("overlap", 64)}}, out),
            "buildings": None, "times": {}}


CHILDREN = {"ours": child_ours, "baseline": child_baseline, "model-only": child_model_only}


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
                job = dict(pipeline=pipe, mode="overhead", scene=str(sc.path), mpx=sc.megapixels)
                jobs.append(("overhead (oracle)", label, job))
    if "model" in args.modes:
        ckpt, name = default_checkpoint(cache, args.random_depth or (18 if args.quick else 50), bool(args.random_depth))
        if args.quick:
            sc, label = scenes.build_tiff(1024), "1024²"
            mpx = 1024 * 1024 / 1e6
        else:
            sc, label, mpx = scenes.MOSAIC, "mosaic 3072x2048", 3072 * 2048 / 1e6
        for pipe in ("ours", "model-only", "baseline"):
            jobs.append(
                (f"model ({name})", label, dict(pipeline=pipe, mode="model", scene=str(sc), checkpoint=ckpt, mpx=mpx))
            )
    return jobs


def shares(times: dict) -> str:
    total = sum(times.get(s, 0.0) for s in STAGES)
    if not total:
        return ""
    return " ".join(f"{s} {100 * times[s] / total:.0f}%" for s in STAGES if times.get(s, 0.0) / total >= 0.005)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small scenes only: < 3 minutes on 2 cores")
    ap.add_argument("--modes", nargs="+", default=["overhead", "model"], choices=["overhead", "model"])
    ap.add_argument("--sizes", nargs="+", type=int, help="overhead-mode scene sides (default 2048 8192 16384)")
    ap.add_argument(
        "--nodata", type=int, default=8192, help="side of the nodata-collar scene in overhead mode (0: none)"
    )
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

    print(f"# fpn-geo benchmarks: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads; scenes in {scenes.CACHE}")
    header = (f"{'mode':<34} {'scene':<18} {'pipeline':<15} {'wall s':>7} {'Mpx/s':>7} {'peak RSS MB':>11} "
              f"{'buildings':>9}  stage shares (ours)")
    print(header)
    print("-" * len(header))
    results = []
    for mode, label, job in jobs:
        r = measure(job)
        results.append(r)
        secs = r["seconds"]
        mpxs = job["mpx"] / secs if secs else 0.0
        b = "" if r["buildings"] is None else r["buildings"]
        extra = shares(r["times"]) if job["pipeline"] == "ours" else ""
        if job["pipeline"] == "model-only":
            ours = next(x for x in results[::-1] if x["job"]["pipeline"] == "ours" and x["job"]["mode"] == "model")
            extra = f"ours / model-only = {ours['seconds'] / secs:.3f}"
        print(f"{mode:<34} {label:<18} {job['pipeline']:<15} {secs:7.1f} {mpxs:7.2f} {r['peak_rss_mb']:11.0f} "
            f"{b!s:>9}  {extra}", flush=True)
    print(f"# total {time.perf_counter() - t_all:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
