"""`fpn-geo` command line: segment a scene, train a segmenter, evaluate predictions, or describe a scene or
checkpoint."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from fpn_geo.errors import FpnGeoError

if TYPE_CHECKING:
    from fpn_geo.model.registry import ModelChoice
    from fpn_geo.outputs import SceneOutputs
    from fpn_geo.plan import ScenePlan

SEGMENT_FLAGS = {
    "window": "--window", "overlap": "--overlap", "batch": "--batch", "device": "--device", "threshold": "--threshold",
    "min_area_m2": "--min-area", "simplify_m": "--simplify", "compile": "--compile", "probability": "--no-probability",
}


def check_segment_run(
    args: argparse.Namespace, cfg, choice: ModelChoice | None = None
) -> tuple[ScenePlan, SceneOutputs]:
    """Everything that can be checked before the model loads and the first window is read: output paths, the
    checkpoint's metadata, then the plan itself (the scene, its radiometry, the window clamped to the scene),
    and scratch space. Returns the plan and the checked outputs, which `segment` then runs and writes as they
    are. `choice`: the checkpoint
    (`model.registry.choose_model`); by default `--model`."""
    from fpn_geo.model.meta import meta_path, read_meta
    from fpn_geo.model.registry import choose_model
    from fpn_geo.outputs import check_scratch_space, scene_outputs
    from fpn_geo.plan import plan_scene

    choice = choice or choose_model(args.scene, args.model)
    model = "--model" if choice.selection == "explicit" else "the bundled model"

    inputs = {
        "SCENE": args.scene,
        model: choice.path,
        f"{model}'s metadata": str(meta_path(choice.path)),
        "--config": args.config,
    }
    outputs = scene_outputs(inputs, args.out, args.probability, cfg.probability == "cog", ("--out", "--probability"))
    meta = read_meta(choice.path)
    plan = plan_scene(args.scene, meta, cfg, choice.path, choice.selection)
    if plan.cfg.window != cfg.window:
        logging.getLogger("fpn_geo").info("window %d is larger than the scene: using %d", cfg.window, plan.cfg.window)
    if cfg.probability == "cog":  # the blocks' compressed tiles: well under a byte a model pixel and channel
        model_px = plan.grid.height * plan.grid.width
        check_scratch_space(cfg.scratch_dir, int(model_px * meta.channels * 0.5), "the probability tiles")
    return plan, outputs


def _segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fpn_geo.config import load_config
    from fpn_geo.model.registry import choose_model
    from fpn_geo.pipeline import load_segmenter, segment

    cfg = load_config(
        args.config, flags=SEGMENT_FLAGS, window=args.window, overlap=args.overlap, batch=args.batch,
        device=args.device,
        threshold=args.threshold, min_area_m2=args.min_area, simplify_m=args.simplify, compile=args.compile or None,
        probability="none" if args.no_probability else None,
    )
    choice = choose_model(args.scene, args.model)  # --model, else the bundled model for the scene's GSD
    plan, outputs = check_segment_run(args, cfg, choice)
    segmenter = load_segmenter(choice.path, plan.cfg.device, plan.cfg.compile)
    bar = tqdm(total=0, unit="win", desc="segment", disable=args.quiet or None, file=sys.stderr)
    summary = segment(
        args.scene, segmenter, outputs, plan.cfg,
        on_start=lambda n: bar.reset(total=n), on_batch=bar.update, plan=plan,
    )
    bar.close()
    print(summary.line())
    return 0


def _info(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.suffix == ".safetensors":
        from fpn_geo.config import SegmentConfig
        from fpn_geo.model.checkpoint import load_checkpoint
        from fpn_geo.model.summary import checkpoint_summary, read_heldout

        model, meta = load_checkpoint(path)
        parameters = sum(p.numel() for p in model.parameters())
        if not args.json:
            defaults = SegmentConfig().model_dump()
            print(checkpoint_summary(path, meta, parameters, defaults, read_heldout(path, meta)))
            return 0
        info = {**meta.to_dict(), "parameters": parameters}
    else:
        from dataclasses import asdict

        from fpn_geo.scene import open_scene

        scene = open_scene(str(path))
        info = {**asdict(scene), "crs": scene.crs.to_string(), "megapixels": round(scene.megapixels, 3)}
        info.pop("crs_wkt")
    print(json.dumps(info, indent=2, default=str))
    return 0


def _train(args: argparse.Namespace) -> int:
    from fpn_geo.train import load_train_config, train

    cfg = load_train_config(
        args.config, out_dir=args.out_dir, epochs=args.epochs, device=args.device, threads=args.threads,
        resume=args.resume, max_minutes=args.max_minutes, init=args.init,
    )
    if not args.quiet:
        logging.getLogger("fpn_geo.train").setLevel(logging.INFO)
    result = train(cfg)
    print(
        f"{result.epochs_run} epochs, {result.chips_per_s:.2f} chips/s, best held-out score {result.best_score:.4f} "
        f"-> {result.best} (last: {result.last}, metrics: {result.out_dir / 'metrics.csv'})"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from fpn_geo.evaluate import evaluate
    from fpn_geo.outputs import check_output_paths, write_json_atomic

    if args.out:
        inputs = {"PRED": args.pred, "--truth": args.truth, "--raster": args.raster}
        check_output_paths(inputs, {"--out": args.out})

    report = evaluate(args.pred, args.truth, args.raster, iou=args.iou, min_area_m2=args.min_area,
                      pred_layer=args.pred_layer, truth_layer=args.truth_layer)
    if args.out:
        write_json_atomic(args.out, report)
    b = report["building"]
    line = f"F1 {b['f1']:.4f} (P {b['precision']:.4f}, R {b['recall']:.4f}; TP {b['TP']}, FP {b['FP']}, FN {b['FN']})"
    if "pixel_iou" in report:
        line += f", pixel IoU {report['pixel_iou']:.4f}"
    print(line + (f" -> {args.out}" if args.out else ""))
    return 0


def _knob(key: str) -> str:
    """A segment flag's help: the SegmentConfig field's own description and default, so the text cannot drift
    from the one place defaults live (argparse's own default stays None: a --config file may set the key)."""
    from fpn_geo.config import SegmentConfig
    from fpn_geo.model.meta import POSTPROCESS_KEYS

    field = SegmentConfig.model_fields[key]
    shown = ("on" if field.default else "off") if isinstance(field.default, bool) else field.default
    own = ", or the checkpoint's own" if key in POSTPROCESS_KEYS else ""
    return f"{field.description} (default: {shown}{own})".replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    """The ``fpn-geo`` argument parser: one subcommand per task."""
    p = argparse.ArgumentParser(prog="fpn-geo", description="Find buildings in GeoTIFFs.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "segment", help="segment a scene into a building GeoPackage",
        description="Segment a scene into a building GeoPackage (and a probability COG).",
        epilog="Defaults are the documented fields of SegmentConfig (fpn_geo/config.py); a --config file overrides "
        "them, and a flag overrides the file.",
    )
    s.add_argument("scene", help="GeoTIFF (or anything GDAL reads)")
    s.add_argument(
        "--model", help="checkpoint NAME.safetensors (NAME.json beside it); default: the bundled checkpoint whose "
        "gsd_range_m covers the scene's GSD (models/, or the folder in FPN_GEO_MODELS)",
    )
    s.add_argument("--out", required=True, help="output GeoPackage")
    s.add_argument("--config", help="YAML overrides of the documented defaults, e.g. configs/segment.yaml")
    s.add_argument("--probability", help="probability COG path (default OUT.probability.tif)")
    s.add_argument("--no-probability", action="store_true", help="do not keep the probability COG")
    s.add_argument("--window", type=int, metavar="PX", help=_knob("window"))
    s.add_argument("--overlap", type=int, metavar="PX", help=_knob("overlap"))
    s.add_argument("--batch", type=int, metavar="N", help=_knob("batch"))
    s.add_argument("--device", help=_knob("device"))
    s.add_argument("--threshold", type=float, metavar="P", help=_knob("threshold"))
    s.add_argument("--min-area", type=float, metavar="M2", help=_knob("min_area_m2"))
    s.add_argument("--simplify", type=float, metavar="M", help=_knob("simplify_m"))
    s.add_argument("--compile", action="store_true", help=_knob("compile"))
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_segment)

    t = sub.add_parser("train", help="train a segmenter from GeoTIFFs and labels (YAML config)")
    t.add_argument("--config", required=True, help="training YAML, e.g. configs/train_default.yaml")
    t.add_argument("--out-dir", help="override out_dir (checkpoints, metrics.csv, curve.png)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--device")
    t.add_argument("--threads", type=int)
    t.add_argument("--max-minutes", type=float)
    t.add_argument("--resume", help="continue from an earlier run's last.safetensors")
    t.add_argument("--init", help="warm start: continue this checkpoint of the same architecture (its weights, "
                   "normalisation and ledger), e.g. models/default.safetensors")
    t.add_argument("-q", "--quiet", action="store_true", help="no per-epoch log lines")
    t.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="score predicted polygons against truth (SpaceNet F1, pixel IoU)")
    e.add_argument("pred", help="predicted buildings (GeoPackage or any vector file)")
    e.add_argument("--truth", required=True, help="truth building polygons (any vector file, any CRS)")
    e.add_argument("--out", help="write the JSON report here")
    e.add_argument(
        "--pred-layer", help="layer of PRED (default: the only one, else 'buildings', else the only polygon layer)"
    )
    e.add_argument("--truth-layer", help="layer of --truth (same default)")
    e.add_argument("--raster", help="a GeoTIFF whose grid is used for pixel IoU")
    e.add_argument("--iou", type=float, default=0.5, help="match threshold (SpaceNet: 0.5)")
    e.add_argument("--min-area", type=float, default=0.0, help="drop polygons under this many m² on both sides")
    e.set_defaults(func=_evaluate)

    i = sub.add_parser("info", help="describe a scene or a checkpoint")
    i.add_argument("path")
    i.add_argument("--json", action="store_true", help="a checkpoint's full metadata record as JSON")
    i.set_defaults(func=_info)
    return p


def _first_line(e: BaseException) -> str:
    return ((str(e) or type(e).__name__).splitlines() or [""])[0][:300]


def main(argv: list[str] | None = None) -> int:
    """The ``fpn-geo`` entry point: an exit code, with errors on one line instead of a traceback."""
    from fpn_geo.signals import Terminated, terminate_as_interrupt

    terminate_as_interrupt()  # `timeout`, `docker stop`, Prefect cancellation: cleaned up like Ctrl-C
    # Scenes without a geotransform are refused by open_scene with a line that says so; a rasterio warning about
    # some other dataset without one would only break that one line. (Its first source, GDAL tracing a block at the
    # grid's origin, went with fpn_geo.trace; kept as a guard.)
    from rasterio.errors import NotGeoreferencedWarning

    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except FpnGeoError as e:
        print(f"fpn-geo: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `fpn-geo info X | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, MemoryError) as e:  # a full disk, a lost mount, no memory: one line, not a traceback
        print(f"fpn-geo: error: {type(e).__name__}: {_first_line(e)}; no output written", file=sys.stderr)
        return 1
    except Exception as e:
        if type(e).__module__.split(".")[0] not in ("rasterio", "pyogrio", "sqlite3", "fiona", "shapely"):
            raise  # our own bug: the traceback is what a report needs
        print(f"fpn-geo: error: {_first_line(e)}; no output written", file=sys.stderr)
        return 1
    except Terminated:
        print("fpn-geo: terminated (SIGTERM); no output written", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("fpn-geo: interrupted; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
