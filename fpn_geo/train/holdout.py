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
from fpn_geo.train.config import TrainConfig, load_train_config
from fpn_geo.train.samplers import fraction_block
from fpn_geo.truth import read_labels


def export_holdout(cfg: TrainConfig, source: str, out_dir: str | Path, root: Path | None = None) -> tuple[Path, Path]:
    """Write ``SOURCE_holdout.tif`` (scene pixels of the block) and ``SOURCE_holdout_labels.gpkg``; returns both paths.

    The block is ``val_block``'s fractions of the scene's own pixel grid, rounded outwards: the training cache
    blanks the same fractions (plus a margin) on every model grid, so no training chip sees these pixels.
    """
    root = cfg.root if root is None else root
    matches = [s for s in cfg.sources if s.name == source]
    if not matches or matches[0].val_block is None:
        have = [s.name for s in cfg.sources if s.val_block]
        raise ConfigError(f"source {source!r} has no val_block in this config; sources with one: {have}")
    sc = matches[0]
    val_block = sc.val_block
    assert val_block is not None  # checked above
    pairs = sc.pairs(root)
    if len(pairs) != 1 or pairs[0][2] != "labels":
        raise ConfigError(f"source {source!r} must be one image with vector labels to export its block")
    image, labels, _kind = pairs[0]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tif, gpkg = out_dir / f"{source}_holdout.tif", out_dir / f"{source}_holdout_labels.gpkg"
    with rasterio.open(image) as src:
        b = fraction_block(val_block, src.height, src.width)
        win = rasterio.windows.Window(b.col0, b.row0, b.width, b.height)
        profile = {**src.profile, "width": b.width, "height": b.height, "transform": src.window_transform(win)}
        profile.update(driver="GTiff", tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                       photometric="RGB" if src.count == 3 else "MINISBLACK")
        profile.pop("jpeg_quality", None)
        with rasterio.open(tif, "w", **profile) as dst:
            dst.write(src.read(window=win))
            mask = src.dataset_mask(window=win)
            if (mask == 0).any():
                dst.write_mask(mask)
        bounds = rasterio.windows.bounds(win, src.transform)
        crs = src.crs
    truth = read_labels(labels, crs).clip(shapely.box(*bounds))
    truth = truth[truth.geom_type.isin(["Polygon", "MultiPolygon"])].explode(index_parts=False)
    truth[["geometry"]].to_file(gpkg, driver="GPKG")
    return tif, gpkg


def main(argv: list[str] | None = None) -> int:
    """``python -m fpn_geo.train.holdout``: export one source's held-out block; the exit code."""
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
