"""The ceiling of the targets and the instance split: building F1 of a *perfect* separator model per place.

For each held-out block and model GSD, the truth is rasterized into the training target (background,
interior, separator), turned into the two uint8 channels a perfect model would emit (footprint, P(separator)),
split by ``fpn_geo.instances.label_instances`` (separation on) or plain connected components (off),
polygonized at that GSD and scored against the truth (IoU >= 0.5, >= 4 m² on both sides). No model runs:
this measures what resolution and the split alone cost, not the product's end-to-end score.

    python benchmarks/separation_ceiling.py [--gsds 0.15 0.3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "configs" / "train_default.yaml"))
    p.add_argument("--gsds", type=float, nargs="+", default=[0.15, 0.3])
    p.add_argument("--work", default=str(REPO / "runs" / "holdout" / "blocks"))
    a = p.parse_args(argv)

    import geopandas as gpd
    import numpy as np
    import rasterio
    import rasterio.features
    import shapely
    from affine import Affine
    from pyproj import CRS

    from fpn_geo.evaluate import building_f1
    from fpn_geo.georef import bounds_utm, pixel_size_m
    from fpn_geo.instances import label_instances
    from fpn_geo.train.cache import grid_shape
    from fpn_geo.train.config import load_train_config
    from fpn_geo.train.validate import export_blocks
    from fpn_geo.truth import SEPARATOR, rasterize_instances, read_labels, separator_target

    cfg = load_train_config(a.config)
    from fpn_geo.regularize import regularize, vertex_count

    print(f"{'place':12s} " + "  ".join(f"{g:.2f} m sep / nosep / sep+right-angled (vertices)" for g in a.gsds))
    for b in export_blocks(cfg, a.work):
        with rasterio.open(b.image) as src:
            native = pixel_size_m(src.transform, CRS.from_user_input(src.crs), src.width, src.height)
            H, W, T, crs = src.height, src.width, src.transform, src.crs
        truth = read_labels(b.truth, crs)
        cells = []
        for g in a.gsds:
            h, w = grid_shape(H, W, native, g)
            t = T * Affine.scale(W / w, H / h)
            target = separator_target(rasterize_instances(truth, t, (h, w)), cfg.contact_px)
            fp = np.where(target > 0, 255, 0).astype(np.uint8)
            sep = np.where(target == SEPARATOR, 255, 0).astype(np.uint8)
            scores, verts = [], []
            for contact in (sep, None):
                labels = label_instances(fp, contact, 0.5)
                polys = [
                    shapely.geometry.shape(s)
                    for s, v in rasterio.features.shapes(labels, mask=labels > 0, transform=t, connectivity=4)
                ]
                pred = gpd.GeoDataFrame(geometry=polys, crs=crs)
                scores.append(building_f1(pred, truth, iou=0.5, min_area_m2=4.0)["f1"])
                if contact is not None:
                    utm = bounds_utm(pred.crs, pred.total_bounds)
                    reg = gpd.GeoDataFrame(geometry=regularize(pred.geometry.to_crs(utm).values), crs=utm).to_crs(crs)
                    f1_reg = building_f1(reg, truth, iou=0.5, min_area_m2=4.0)["f1"]
                    verts = [vertex_count(pred.geometry.values), vertex_count(reg.geometry.values)]
            cells.append(f"{scores[0]:.3f} / {scores[1]:.3f} / {f1_reg:.3f} ({verts[0]} -> {verts[1]})")
        print(f"{b.place:12s} " + "  ".join(f"{c:>40s}" for c in cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
