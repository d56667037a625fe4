"""Validation through the production path: each held-out block, cut once into a small GeoTIFF, goes through
``fpn_geo.pipeline.segment`` (the product's window grid, blend, instance split and vectorizer) and is scored
by ``fpn_geo.evaluate.evaluate``, exactly as ``fpn-geo segment`` + ``fpn-geo evaluate`` would score it.

Scores are per place (one held-out block each): building F1 at IoU >= 0.5 with the separator split on and
off, and pixel IoU; pooled over places from their TP/FP/FN. Thresholds tuned on these blocks (see
``python -m fpn_geo.train.eval_places``) are tuned on held-out ground only, and say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fpn_geo.train.config import TrainConfig


@dataclass(frozen=True)
class HeldOutBlock:
    """A held-out block as the product sees a scene: its pixels at native resolution and its truth polygons."""

    place: str
    source: str
    image: Path
    truth: Path


def export_blocks(cfg: TrainConfig, out_dir: str | Path, root: Path | None = None) -> list[HeldOutBlock]:
    """Cut every source's ``val_block`` into ``out_dir`` (once; existing files are reused)."""
    root = cfg.root if root is None else root
    from fpn_geo.train.holdout import export_holdout

    blocks = []
    for sc in cfg.sources:
        if sc.val_block is None:
            continue
        tif, gpkg = Path(out_dir) / f"{sc.name}_holdout.tif", Path(out_dir) / f"{sc.name}_holdout_labels.gpkg"
        if not (tif.is_file() and gpkg.is_file()):
            tif, gpkg = export_holdout(cfg, sc.name, out_dir, root)
        blocks.append(HeldOutBlock(sc.place or sc.name, sc.name, tif, gpkg))
    return blocks


def segmenter_from_model(model: Any, meta: Any, device: str = "cpu") -> Any:
    """A ``pipeline.Segmenter`` around an in-memory model, so ``pipeline.segment`` can run it.

    The ONE place that builds the pipeline's segmenter from a model rather than a checkpoint file: adapt it
    here if the pipeline's ``Segmenter`` changes. ``pipeline.load_segmenter(checkpoint)`` does the same from a file.
    """
    from fpn_geo.pipeline import Segmenter
    from fpn_geo.predictor import SegmenterPredictor

    predictor = SegmenterPredictor(model, meta, device)
    return Segmenter(predictor, meta, None, str(predictor.device))


def score_block(
    segmenter: Any, block: HeldOutBlock, work_dir: str | Path, threshold: float = 0.5, separate: bool = True,
    min_area_m2: float = 4.0, simplify_m: float = 0.3, **segment_overrides: Any,
) -> dict[str, Any]:
    """``segment`` the block's GeoTIFF, then ``evaluate`` it against the block's truth; the report's numbers, flat."""
    from fpn_geo.config import load_config
    from fpn_geo.evaluate import evaluate
    from fpn_geo.pipeline import segment

    seg_cfg = load_config(
        None, threshold=threshold, separate_touching=separate, min_area_m2=min_area_m2, simplify_m=simplify_m,
        probability="none", **segment_overrides,
    )
    out = Path(work_dir) / f"{block.source}_t{round(threshold * 100):02d}_{'sep' if separate else 'nosep'}.gpkg"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = segment(str(block.image), segmenter, out, seg_cfg)
    rep = evaluate(out, block.truth, block.image, iou=0.5, min_area_m2=min_area_m2)
    b = rep["building"]
    return {
        "place": block.place, "source": block.source, "threshold": threshold, "separate": separate,
        "f1": b["f1"], "precision": b["precision"], "recall": b["recall"], "tp": b["TP"], "fp": b["FP"], "fn": b["FN"],
        "pixel_iou": rep["pixel_iou"], "buildings": summary.buildings, "gpkg": str(out),
    }


def setting_key(threshold: float, separate: bool) -> str:
    """The name of one scoring setting in a held-out report's summary, e.g. "t0.50_sep"; `fpn-geo info` reads it."""
    return f"t{threshold:.2f}_{'sep' if separate else 'nosep'}"


def pooled(rows: list[dict[str, Any]]) -> dict[str, float]:
    """F1 from the summed TP/FP/FN of several blocks, and the mean per-place F1."""
    tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
    p = tp / (tp + fp) if tp + fp else 0.0
    rc = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * rc / (p + rc) if p * rc else 0.0
    return {"f1": f1, "precision": p, "recall": rc, "tp": tp, "fp": fp, "fn": fn,
            "mean_place_f1": sum(r["f1"] for r in rows) / len(rows) if rows else 0.0}


def validate_places(
    segmenter: Any, blocks: list[HeldOutBlock], work_dir: str | Path, threshold: float = 0.5,
    min_area_m2: float = 4.0, simplify_m: float = 0.3, **segment_overrides: Any,
) -> dict[str, Any]:
    """Every held-out block with the separator split on and off; flat ``val_*`` keys for the metrics CSV plus
    ``rows``."""
    rows = [
        score_block(segmenter, b, work_dir, threshold, sep, min_area_m2, simplify_m, **segment_overrides)
        for b in blocks
        for sep in ((True, False) if segmenter.meta.channels > 1 else (False,))
    ]
    out: dict[str, Any] = {"rows": rows}
    n = len([r for r in rows if r["separate"] == rows[0]["separate"]])
    out["val_pixel_iou"] = sum(r["pixel_iou"] for r in rows if r["separate"] == rows[0]["separate"]) / max(1, n)
    for sep, key in ((True, "sep"), (False, "nosep")):
        rs = [r for r in rows if r["separate"] == sep]
        if rs:
            p = pooled(rs)
            out.update({f"val_f1_{key}": p["f1"], f"val_precision_{key}": p["precision"],
                        f"val_recall_{key}": p["recall"],
                        f"val_tp_{key}": p["tp"], f"val_fp_{key}": p["fp"], f"val_fn_{key}": p["fn"],
                        f"val_mean_place_f1_{key}": p["mean_place_f1"]})
            for r in rs:
                out[f"val_f1_{key}_{r['place']}"] = r["f1"]
    return out
