"""`train-segmenter` and `evaluate-buildings`: training and evaluation of the fpn_geo library as Prefect flows.

The flows only put library calls in order (``fpn_geo.train.train``, ``fpn_geo.evaluate.evaluate``) and
publish what they did as artifacts; all ML and GIS logic stays in the library.

Run from the command line:
  python -m flows.train train --config configs/train_default.yaml [--out-dir DIR] [--resume LAST]
  python -m flows.train evaluate PRED.gpkg --truth LABELS [--raster SCENE] [--out report.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from fpn_geo.evaluate import evaluate
from fpn_geo.outputs import write_json_atomic
from fpn_geo.train import TrainConfig, load_train_config, train

TABLE_KEYS = ("epoch", "train_loss", "chips_per_s", "val_pixel_iou", "val_f1_sep", "val_f1_nosep")


@task(name="load-train-config", cache_policy=NO_CACHE)
def load_config_task(config: str, overrides: dict[str, Any]) -> TrainConfig:
    """Validate the YAML first, so a wrong key fails in seconds, not after the data is read."""
    return load_train_config(config, **overrides)


@task(name="train", cache_policy=NO_CACHE)
def train_task(cfg: TrainConfig) -> dict[str, Any]:
    """Run ``fpn_geo.train.train`` with each epoch logged to the flow run; a JSON-ready summary."""
    logger = get_run_logger()

    def on_epoch(row: dict[str, Any]) -> None:
        logger.info(
            "epoch %d: loss %.4f, %.2f chips/s, held-out pixel IoU %.3f, F1 %.3f (separated) / %.3f",
            row["epoch"], row["train_loss"], row["chips_per_s"], row["val_pixel_iou"],
            row.get("val_f1_sep", float("nan")), row.get("val_f1_nosep", float("nan")),
        )

    result = train(cfg, on_epoch=on_epoch)
    return {
        "out_dir": str(result.out_dir),
        "best": str(result.best),
        "last": str(result.last),
        "epochs_run": result.epochs_run,
        "best_score": result.best_score,
        "chips_per_s": result.chips_per_s,
        "history": [{k: row.get(k) for k in TABLE_KEYS} for row in result.history],
    }


@task(name="report-training", cache_policy=NO_CACHE)
def report_training(summary: dict[str, Any]) -> None:
    """Publish the per-epoch history and the outcome as Prefect artifacts."""
    rows = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in summary["history"]]
    create_table_artifact(
        key="train-segmenter-history", table=rows, description="per-epoch training loss and held-out scores"
    )
    create_markdown_artifact(
        key="train-segmenter-summary",
        markdown=(
            f"**best** `{summary['best']}` (held-out F1 {summary['best_score']:.4f}); **last** `{summary['last']}`; "
            f"{summary['epochs_run']} epochs at {summary['chips_per_s']:.2f} chips/s; curve "
            f"`{summary['out_dir']}/curve.png`"
        ),
    )


@flow(name="train-segmenter", log_prints=True)
def train_segmenter(
    config: str = "configs/train_default.yaml",
    out_dir: str | None = None,
    resume: str | None = None,
    epochs: int | None = None,
) -> dict[str, Any]:
    """Train a building segmenter from a YAML config; returns where the best and last checkpoints are."""
    cfg = load_config_task(config, {"out_dir": out_dir, "resume": resume, "epochs": epochs})
    summary = train_task(cfg)
    report_training(summary)
    return summary


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(pred: str, truth: str, raster: str | None, iou: float, min_area_m2: float) -> dict[str, Any]:
    """``fpn_geo.evaluate.evaluate`` as a task: predicted buildings scored against the truth."""
    return evaluate(pred, truth, raster, iou=iou, min_area_m2=min_area_m2)


@task(name="write-report", cache_policy=NO_CACHE)
def write_report(report: dict[str, Any], out: str) -> str:
    """Write the evaluation report as JSON, atomically; returns its path."""
    return str(write_json_atomic(out, report))


@flow(name="evaluate-buildings", log_prints=True)
def evaluate_buildings(
    pred: str, truth: str, raster: str | None = None, out: str | None = None, iou: float = 0.5, min_area_m2: float = 0.0
) -> dict[str, Any]:
    """SpaceNet building F1 (and pixel IoU on ``raster``'s grid) of predicted polygons against truth."""
    report = evaluate_task(pred, truth, raster, iou, min_area_m2)
    if out:
        write_report(report, out)
    b = report["building"]
    create_markdown_artifact(
        key="evaluate-buildings",
        markdown=f"F1 **{b['f1']:.4f}** (TP {b['TP']}, FP {b['FP']}, FN {b['FN']})"
        + (f", pixel IoU {report['pixel_iou']:.4f}" if "pixel_iou" in report else ""),
    )
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.train train|evaluate ...``: run a flow once here; the exit code."""
    p = argparse.ArgumentParser(prog="python -m flows.train")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--config", default="configs/train_default.yaml")
    t.add_argument("--out-dir")
    t.add_argument("--resume")
    t.add_argument("--epochs", type=int)
    e = sub.add_parser("evaluate")
    e.add_argument("pred")
    e.add_argument("--truth", required=True)
    e.add_argument("--raster")
    e.add_argument("--out")
    e.add_argument("--iou", type=float, default=0.5)
    e.add_argument("--min-area", type=float, default=0.0)
    a = p.parse_args(argv)
    if a.command == "train":
        print(
            json.dumps(
                {k: v for k, v in train_segmenter(a.config, a.out_dir, a.resume, a.epochs).items() if k != "history"},
                indent=2,
            )
        )
    else:
        print(json.dumps(evaluate_buildings(a.pred, a.truth, a.raster, a.out, a.iou, a.min_area)["building"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
