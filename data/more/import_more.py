"""Copy the eight training sets of ../shared/data/more into data/more, small enough to live in git.

3-band uint8 imagery is re-encoded as JPEG-in-TIFF (quality 90, YCbCr, 256 tiles, internal mask kept);
already-JPEG and tiny rasters are copied as they are. Labels and licence files are copied unchanged, except
kampala_south (see ../shared/data/README.md): its two buildings that reach into kampala_oam's held-out
eastern third (osm_id 614849168, 616020118) are dropped, and the top 80 rows (~12 m) of its rasters are cut.

    python data/more/import_more.py [--src ../shared/data/more]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import rasterio
from rasterio.windows import Window

HERE = Path(__file__).resolve().parent
KAMPALA_SOUTH_DROP = {614849168, 616020118}
KAMPALA_SOUTH_TOP_ROWS = 80  # 80 x 0.149 m = 11.9 m


def reencode(src_path: Path, dst_path: Path, top_rows: int = 0) -> None:
    with rasterio.open(src_path) as src:
        win = Window(0, top_rows, src.width, src.height - top_rows)
        profile = src.profile.copy()
        profile.update(
            driver="GTiff", width=int(win.width), height=int(win.height), transform=src.window_transform(win),
            tiled=True, blockxsize=256, blockysize=256, compress="JPEG", jpeg_quality=90, photometric="YCBCR",
            interleave="pixel",
        )
        profile.pop("nodata", None)
        data = src.read(window=win)
        mask = src.dataset_mask(window=win)
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            with rasterio.open(dst_path, "w", **profile) as dst:
                dst.write(data)
                if (mask == 0).any():
                    dst.write_mask(mask)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", default=str(HERE.parents[2] / "shared" / "data" / "more"))
    a = p.parse_args()
    src_root = Path(a.src)
    for d in sorted(x for x in src_root.iterdir() if x.is_dir()):
        out = HERE / d.name
        out.mkdir(exist_ok=True)
        for f in sorted(d.iterdir()):
            dst = out / f.name
            if f.suffix == ".tif":
                with rasterio.open(f) as s:
                    small = s.width * s.height < 500_000 and d.name.startswith("spacenet")
                    jpeg = (s.profile.get("compress") or "").lower() == "jpeg"
                    ok3 = s.count == 3 and s.dtypes[0] == "uint8"
                top = KAMPALA_SOUTH_TOP_ROWS if d.name == "kampala_south" else 0
                if (small or jpeg) and not top:
                    shutil.copyfile(f, dst)
                elif ok3:
                    reencode(f, dst, top)
                else:
                    shutil.copyfile(f, dst)
            elif f.suffix == ".geojson" and d.name == "kampala_south":
                fc = json.loads(f.read_text())
                fc["features"] = [g for g in fc["features"] if g["properties"].get("osm_id") not in KAMPALA_SOUTH_DROP]
                dst.write_text(json.dumps(fc))
            else:
                shutil.copyfile(f, dst)
            print(f"{dst.relative_to(HERE)}  {dst.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
