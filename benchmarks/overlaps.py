"""Pairs of buildings in a GeoPackage that overlap (issue 20: neighbours must never overlap):

    python benchmarks/overlaps.py out/kampala.gpkg [--min-m2 0.1]

Areas in the layer's local UTM zone. Prints the buildings, the pairs that touch or overlap, and those that overlap
by more than --min-m2.
"""

from __future__ import annotations

import argparse

import geopandas as gpd
import numpy as np
import shapely


def overlaps(path: str, min_m2: float) -> tuple[int, int, int, float]:
    """(buildings, pairs that touch or overlap, pairs overlapping by more than min_m2, the largest overlap in m²)."""
    frame = gpd.read_file(path, layer="buildings")
    geoms = frame.to_crs(frame.estimate_utm_crs()).geometry.values
    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    left, right = left[left < right], right[left < right]
    shared = shapely.area(shapely.intersection(geoms[left], geoms[right]))
    return len(frame), len(left), int((shared > min_m2).sum()), float(shared.max()) if len(shared) else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gpkg")
    ap.add_argument("--min-m2", type=float, default=0.1)
    args = ap.parse_args()
    n, touching, over, largest = overlaps(args.gpkg, args.min_m2)
    print(f"{args.gpkg}: {n} buildings, {touching} pairs touch or overlap, {over} overlap by more than "
          f"{args.min_m2} m² (largest {np.round(largest, 3)} m²)")


if __name__ == "__main__":
    main()
