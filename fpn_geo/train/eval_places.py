"""Score a checkpoint on every place's held-out block through the production path, separation on and off.

Each block (declared as ``val_block`` in the training config, never seen by training) is cut once into a
GeoTIFF under ``--work``, run through ``fpn_geo.pipeline.segment`` with ``load_segmenter(checkpoint)`` and
scored by ``fpn_geo.evaluate.evaluate`` (building F1 at IoU >= 0.5, ``--min-area`` on both sides, pixel IoU):
the same numbers as ``fpn-geo segment`` + ``fpn-geo evaluate`` on that block. With several ``--thresholds``
it also reports the threshold with the best pooled F1: tuned on these held-out blocks only.

    python -m fpn_geo.train.eval_places --checkpoint models/default.safetensors \
        [--config configs/train_satellite.yaml] [--thresholds 0.4 0.5 0.6] [--json out.json]

Places carry their kind of imagery (``imagery: drone|satellite`` in the config); the summary gives the mean
place F1 of each kind, since one number over both hides a model that serves only one of them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from fpn_geo import REPO_ROOT


def regularized(row: dict, block, rect_iou: float, min_area: float) -> dict:
    """Score the row's polygons after ``fpn_geo.regularize`` (in the block's UTM zone), as ``evaluate`` scores
    any file."""
    import geopandas as gpd

    from fpn_geo.evaluate import evaluate
    from fpn_geo.georef import bounds_utm
    from fpn_geo.regularize import regularize, vertex_count

    pred = gpd.read_file(row["gpkg"], layer="buildings")
    utm = bounds_utm(pred.crs, pred.total_bounds) if len(pred) else None
    reg = pred.copy()
    if len(pred):
        reg = reg.set_geometry(
            gpd.GeoSeries(regularize(pred.geometry.to_crs(utm).values, rect_iou), crs=utm).to_crs(pred.crs).values
        )
    out = Path(row["gpkg"]).with_name(Path(row["gpkg"]).stem + "_reg.gpkg")
    reg.to_file(out, layer="buildings", driver="GPKG")
    rep = evaluate(out, block.truth, block.image, iou=0.5, min_area_m2=min_area)
    building = rep["building"]
    return {"f1_reg": building["f1"], "tp_reg": building["TP"], "fp_reg": building["FP"], "fn_reg": building["FN"],
            "vertices": vertex_count(pred.geometry.values), "vertices_reg": vertex_count(reg.geometry.values)}


def kind_means(rows: list[dict], kinds: dict[str, str]) -> dict[str, float]:
    """Mean place F1 per kind of imagery ("drone", "satellite"), over the rows of one setting."""
    out: dict[str, float] = {}
    for kind in sorted(set(kinds.values())):
        f1s = [r["f1"] for r in rows if kinds.get(r["place"]) == kind]
        if f1s:
            out[kind] = sum(f1s) / len(f1s)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m fpn_geo.train.eval_places``: score every held-out block; the exit code."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--config",
        default=str(REPO_ROOT / "configs" / "train_default.yaml"),
        help="training config naming the held-out blocks",
    )
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.5])
    p.add_argument("--places", nargs="*", help="only these places")
    p.add_argument("--min-area", type=float, default=4.0)
    p.add_argument("--simplify", type=float, default=0.3)
    p.add_argument("--device", default="auto")
    p.add_argument("--labelling", choices=["auto", "cpu", "device"], default="auto",
                   help="where buildings are labelled and split (config key labelling); device on a CPU runs the "
                   "torch flood that CUDA runs")
    p.add_argument("--work", default=str(REPO_ROOT / "runs" / "holdout"))
    p.add_argument("--json", help="write every row and the summary here")
    p.add_argument("--sheet", help="write a contact-sheet PNG of every block at the best setting here")
    p.add_argument(
        "--regularize",
        type=float,
        metavar="RECT_IOU",
        help="also score right-angled outlines (fpn_geo.regularize, e.g. 0.85)",
    )
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    from fpn_geo.pipeline import load_segmenter
    from fpn_geo.train.config import load_train_config
    from fpn_geo.train.validate import export_blocks, pooled, score_block, setting_key

    cfg = load_train_config(a.config)
    kinds: dict[str, str] = {s.place or s.name: s.imagery for s in cfg.sources if s.imagery}
    blocks = [b for b in export_blocks(cfg, Path(a.work) / "blocks") if not a.places or b.place in a.places]
    seg = load_segmenter(a.checkpoint, a.device)
    modes = (True, False) if seg.meta.channels > 1 else (False,)
    rows = []
    t0 = time.perf_counter()
    for t in a.thresholds:
        for b in blocks:
            for sep in modes:
                r = score_block(seg, b, Path(a.work) / f"{Path(a.checkpoint).stem}_{a.labelling}", t, sep, a.min_area,
                                a.simplify, labelling=a.labelling)
                if a.regularize:
                    r.update(regularized(r, b, a.regularize, a.min_area))
                rows.append(r)
                print(f"{b.place:12s} t={t:.2f} {'sep  ' if sep else 'nosep'} F1 {r['f1']:.3f} (P "
                      f"{r['precision']:.2f} R {r['recall']:.2f}, "
                      f"TP {r['tp']} FP {r['fp']} FN {r['fn']})  pixel IoU {r['pixel_iou']:.3f}", flush=True)
                if a.regularize:
                    print(f"{'':12s} right-angled outlines: F1 {r['f1_reg']:.3f}, vertices {r['vertices']} -> "
                        f"{r['vertices_reg']}", flush=True)
    summary: dict[str, dict[str, Any]] = {}
    for t in a.thresholds:
        for sep in modes:
            rs = [r for r in rows if r["threshold"] == t and r["separate"] == sep]
            summary[setting_key(t, sep)] = {**pooled(rs), "mean_by_imagery": kind_means(rs, kinds)}
    best = max(summary, key=lambda k: summary[k]["f1"])
    print(f"\n{'setting':16s} pooled F1  mean place F1  drone mean  satellite mean")
    for k, v in summary.items():
        mark = "   <- best (tuned on the held-out blocks)" if k == best and len(summary) > 1 else ""
        by = v["mean_by_imagery"]
        print(f"{k:16s} {v['f1']:.3f}      {v['mean_place_f1']:.3f}          {by.get('drone', float('nan')):.3f}"
              f"       {by.get('satellite', float('nan')):.3f}{mark}")
    places = sorted({r["place"] for r in rows})
    print("\nper place F1 at the best threshold, separation on / off:")
    tb = float(best[1:5])
    for pl in places:
        on = [r["f1"] for r in rows if r["place"] == pl and r["threshold"] == tb and r["separate"]]
        off = [r["f1"] for r in rows if r["place"] == pl and r["threshold"] == tb and not r["separate"]]
        f1_on, f1_off = on[0] if on else float("nan"), off[0] if off else float("nan")
        print(f"  {pl:12s} {kinds.get(pl, '?'):9s} {f1_on:.3f} / {f1_off:.3f}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    if a.sheet:
        from fpn_geo.train.contact_sheet import Panel, render_contact_sheet

        sep_best = best.endswith("_sep")
        by_place = {b.place: b for b in blocks}
        chosen = [r for r in rows if r["threshold"] == tb and r["separate"] == sep_best]
        chosen.sort(key=lambda r: (kinds.get(r["place"], ""), r["place"]))
        panels = [
            Panel(by_place[r["place"]].image, Path(r["gpkg"]), by_place[r["place"]].truth,
                  f"{r['place']} ({kinds.get(r['place'], '?')}): F1 {r['f1']:.2f}, "
                  f"TP {r['tp']} FP {r['fp']} FN {r['fn']}")
            for r in chosen
        ]
        render_contact_sheet(panels, a.sheet, title=f"{Path(a.checkpoint).name}, {best}")
        print(f"contact sheet: {a.sheet}")
    if a.json:
        record = {"checkpoint": a.checkpoint, "config": a.config, "rows": rows, "summary": summary,
                  "best": best, "tuned_on": "the held-out blocks"}
        Path(a.json).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
