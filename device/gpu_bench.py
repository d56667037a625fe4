"""GPU throughput: the segmenter alone (eager vs torch.compile), then `segment` end to end on the same device.

Run through device/gpu.sh on a CUDA machine; `--cpu` smoke-tests the same code here with tiny
sizes (its numbers mean nothing). Prints one JSON line per measurement and a summary table.

The model: `--checkpoint` (the bundled model), else random weights in the bundled model's architecture (its
NAME.json: depth, FPN and head widths, classes, GSD), else a ResNet-`--depth` FPN.
Model-only: uint8 tiles already on the device (as the pipeline sends them), normalized there,
channels_last, bf16 autocast, batch `--batch`; tiles/s over `--iters` timed batches after warm-up.
End to end: `segment` on a `--scene-side`² scene at 0.30 m built from the bundled Kampala mosaic (averaged 4x,
tiled), same model and batch, with and without the probability COG; the ratio to model-only says how well
everything around the model keeps up with it.
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


def model_only(model, device: str, batch: int, tile: int, iters: int, warmup: int, cuda: bool) -> float:
    """Tiles per second of the model on uint8 input already on the device."""
    import contextlib

    import torch

    x8 = torch.randint(0, 256, (batch, 3, tile, tile), dtype=torch.uint8, device=device)
    mean = torch.tensor([124.0, 116.0, 104.0], device=device).view(1, 3, 1, 1)
    std = torch.tensor([58.0, 57.0, 57.0], device=device).view(1, 3, 1, 1)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    def step():
        x = (
            ((x8.float() - mean) / std).contiguous(memory_format=torch.channels_last)
            if cuda
            else (x8.float() - mean) / std
        )
        with amp:
            y = model(x)
        return y.float().softmax(dim=1)[:, 0]

    with torch.inference_mode():
        for _ in range(warmup):
            step()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    return batch * iters / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="smoke test on CPU with tiny sizes (numbers meaningless)")
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--scene-side", type=int, default=8192)
    ap.add_argument("--checkpoint", help="the model to time (default: random weights shaped like models/default)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--runs", nargs="+", metavar="LABELLING:COG[:RESAMPLING]",
                    default=["device:none:device", "device:none:cpu", "device:cog:device", "cpu:none:device"],
                    help="end-to-end runs: where buildings are labelled (config labelling: device or cpu), whether "
                    "the probability COG is written (cog or none) and where windows are resampled (config "
                    "resampling: device or cpu; left out: auto)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    if args.cpu:
        args.batch, args.tile, args.iters, args.scene_side = 2, 256, 2, 1024

    import torch

    from benchmarks import scenes
    from fpn_geo.config import load_config
    from fpn_geo.model.checkpoint import load_checkpoint
    from fpn_geo.pipeline import load_segmenter, segment
    from tests.doubles import make_checkpoint

    cuda = not args.cpu
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; use --cpu for a smoke test")
    device = "cuda" if cuda else "cpu"
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fpn-geo-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    bundled = REPO / "models" / "default.safetensors"
    if args.checkpoint:
        ckpt, label = Path(args.checkpoint), Path(args.checkpoint).name
    else:
        ckpt = make_checkpoint(work / "random.safetensors", args.depth, like=bundled)
        label = "random weights, " + (
            "bundled architecture" if bundled.with_suffix(".json").is_file() else f"R{args.depth}"
        )
    emit(what="model", checkpoint=str(ckpt), label=label)
    emit(what="device", device=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    results = {}
    model, _ = load_checkpoint(ckpt)
    model = model.eval().to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    results["eager"] = emit(
        what="model-only",
        variant="eager",
        batch=args.batch,
        tile=args.tile,
        tiles_per_s=model_only(model, device, args.batch, args.tile, args.iters, 3, cuda),
    )["tiles_per_s"]
    if not args.no_compile and cuda:
        t0 = time.perf_counter()
        compiled = torch.compile(model)
        model_only(compiled, device, args.batch, args.tile, 1, 2, cuda)  # compile + warm
        compile_s = time.perf_counter() - t0
        tiles_per_s = model_only(compiled, device, args.batch, args.tile, args.iters, 2, cuda)
        results["compiled"] = emit(what="model-only", variant="compiled", batch=args.batch, tile=args.tile,
                                   compile_s=compile_s, tiles_per_s=tiles_per_s)["tiles_per_s"]
    del model

    t0 = time.perf_counter()
    scene = scenes.build_tiff(args.scene_side, args.scene_side, work, source=scenes.coarse_mosaic(4, work))
    emit(what="scene", path=str(scene), side=args.scene_side, build_s=time.perf_counter() - t0)
    use_compile = "compiled" in results
    seg = load_segmenter(ckpt, device, compile=use_compile)
    cfg = load_config(
        window=args.tile, overlap=64 if args.tile >= 256 else 32, batch=args.batch, device=device, compile=use_compile
    )
    if use_compile:  # compile outside the timed run: one batch on the pipeline's own predictor
        import numpy as np

        seg.predictor(np.zeros((args.batch, len(seg.meta.bands), args.tile, args.tile), np.uint8), [None] * args.batch)
    best = max(results.values())
    lines = []
    for run in args.runs:
        labelling, probability, resampling = (run.split(":") + ["auto"])[:3]
        s = segment(str(scene), seg, work / f"out_{labelling}_{probability}_{resampling}.gpkg",
                    cfg.model_copy(update={"probability": probability, "labelling": labelling,
                                           "resampling": resampling}))
        tiles_per_s = s.windows / s.seconds
        emit(what="end-to-end", labelling=labelling, probability=probability, resampling=resampling,
             windows=s.windows,
             predicted=s.windows_predicted, buildings=s.buildings, seconds=s.seconds, mpx_per_s=s.mpx_per_s,
             tiles_per_s=tiles_per_s, share_of_model_only=tiles_per_s / best, stage_seconds=s.times,
             compiled=use_compile)
        stages = " ".join(f"{k} {v:.2f}" for k, v in s.times.items())
        lines.append(
            f"end-to-end (labels on {labelling}, {probability} COG, resampled on {resampling}) {tiles_per_s:.0f} "
            f"tiles/s = "
            f"{tiles_per_s / best:.3f} of model-only; {s.seconds:.1f} s, {s.buildings} buildings; "
            f"stage seconds (summed over threads) {stages}"
        )
    print(
        f"\n{label}: model-only eager {results['eager']:.0f} tiles/s"
        + (f", compiled {results['compiled']:.0f} tiles/s" if use_compile else "")
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
