"""Export a source's held-out block at the scene's own resolution, with its labels clipped to it.

Use it to score a trained model the way users run it: ``fpn-geo segment`` on the exported GeoTIFF,
then ``fpn-geo evaluate`` against the exported labels. The block is the one training never sampled.

    python -m fpn_geo.train.holdout --config configs/train_default.yaml --source kampala --out-dir /tmp/holdout
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import rasterio
import rasterio.windows
import shapely

from fpn_geo.errors import ConfigError, FpnGeoError
from fpn_geo.labels import read_labels
from fpn_geo.train.config import REPO, TrainConfig, load_train_config
from fpn_geo.train.dataset import load_source


def export_holdout(cfg: TrainConfig, source: str, out_dir: str | Path, root: Path = REPO) -> tuple[Path, Path]:
    """Write ``SOURCE_holdout.tif`` (scene pixels of the block) and ``SOURCE_holdout_labels.gpkg``; returns both paths."""
    matches = [s for s in cfg.sources if s.name == source]
    if not matches or matches[0].val_block is None:
        have = [s.name for s in cfg.sources if s.val_block]
        raise ConfigError(f"source {source!r} has no val_block in this config; sources with one: {have}")
    sc = matches[0]
    pairs = sc.pairs(root)
    if len(pairs) != 1 or pairs[0][2] != "labels":
        raise ConfigError(f"source {source!r} must be one image with vector labels to export its block")
    image, labels, kind = pairs[0]
    s = load_source(sc.name, image, labels, kind, cfg.gsd_m, cfg.bands, cfg.contact_px, sc.weight, sc.val_block)
    b = s.val_block
    (x0, y0), (x1, y1) = s.transform * (b.col0, b.row0), s.transform * (b.col1, b.row1)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tif, gpkg = out_dir / f"{source}_holdout.tif", out_dir / f"{source}_holdout_labels.gpkg"
    with rasterio.open(image) as src:
        win = rasterio.windows.from_bounds(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1), src.transform)
        win = win.round_offsets().round_lengths().intersection(rasterio.windows.Window(0, 0, src.width, src.height))
        profile = {**src.profile, "width": int(win.width), "height": int(win.height), "transform": src.window_transform(win)}
        profile.update(driver="GTiff", tiled=True, blockxsize=256, blockysize=256, compress="deflate")
        with rasterio.open(tif, "w", **profile) as dst:
            dst.write(src.read(window=win))
        bounds = rasterio.windows.bounds(win, src.transform)
        crs = src.crs
    truth = read_labels(labels, crs).clip(shapely.box(*bounds))
    truth = truth[truth.geom_type.isin(["Polygon", "MultiPolygon"])].explode(index_parts=False)
    truth[["geometry"]].to_file(gpkg, driver="GPKG")
    return tif, gpkg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fpn_geo.train.holdout", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--out-dir", required=True)
    a = p.parse_args(argv)
    try:
        tif, gpkg = export_holdout(load_train_config(a.config), a.source, a.out_dir)
    except FpnGeoError as e:
        print(f"holdout: error: {e}", file=sys.stderr)
        return 2
    print(f"{tif}\n{gpkg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
