"""Cloud-optimized crops of the real Kampala mosaic and a static STAC catalog of them, as a provider publishes
scenes: one item per scene, its COG the `visual` asset, hrefs on the test's HTTP server."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import rasterio
from rasterio.shutil import copy as rio_copy
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from tests.doubles import KAMPALA_Z20, write_raster


def cog_crop(path: Path, col: int, row: int, width: int, height: int, src_path: Path = KAMPALA_Z20) -> Path:
    """A crop of `src_path` written as a COG (256-pixel tiles, overviews, deflate): what providers publish."""
    with rasterio.open(src_path) as src:
        window = Window(col, row, width, height)
        data = src.read(window=window)
        transform, crs = src.window_transform(window), src.crs
    plain = write_raster(path.with_suffix(".plain.tif"), data, crs=crs, transform=transform)
    rio_copy(plain, path, driver="COG", BLOCKSIZE=256, COMPRESS="DEFLATE", OVERVIEWS="AUTO")
    plain.unlink()
    return path


def static_collection(folder: Path, cogs: dict[str, Path], base_url: str, dates: dict[str, datetime], base: Path,
                      collection_id: str = "kampala") -> Path:
    """folder/collection.json: a collection with one item per COG (id -> path under `base`, served at `base_url`)
    dated `dates[id]`, items saved beside it, for a STAC API server to load; returns its path."""
    import pystac

    catalog = pystac.Catalog.from_file(str(static_catalog(folder / "_catalog", cogs, base_url, base=base)))
    items = list(catalog.get_items())
    for item in items:
        item.datetime = dates[item.id]
    extent = pystac.Extent(pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]),
                           pystac.TemporalExtent([[min(dates.values()), max(dates.values())]]))
    collection = pystac.Collection(id=collection_id, description="Kampala crops", extent=extent)
    for item in items:
        item.set_collection(None)
        collection.add_item(item)
    collection.normalize_hrefs(str(folder))
    collection.save(catalog_type=pystac.CatalogType.ABSOLUTE_PUBLISHED)  # rustac reads hrefs from its cwd
    return folder / "collection.json"


def static_catalog(folder: Path, cogs: dict[str, Path], base_url: str, asset: str = "visual",
                   base: Path | None = None) -> Path:
    """folder/catalog.json: a self-contained catalog with one item per COG (id -> path under `base`, default
    `folder`), each asset's href `base_url/<that path>`; returns the catalog's path."""
    import pystac
    import shapely.geometry

    catalog = pystac.Catalog(id="scenes", description="Kampala crops served for the STAC tests")
    for item_id, cog in cogs.items():
        with rasterio.open(cog) as src:
            west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        geom = shapely.geometry.mapping(shapely.geometry.box(west, south, east, north))
        item = pystac.Item(
            id=item_id, geometry=geom, bbox=[west, south, east, north],
            datetime=datetime(2024, 5, 1, tzinfo=timezone.utc), properties={},
        )
        item.add_asset(asset, pystac.Asset(
            href=f"{base_url}/{cog.relative_to(base or folder).as_posix()}", media_type=pystac.MediaType.COG,
            roles=["data"],
        ))
        catalog.add_item(item)
    catalog.normalize_hrefs(str(folder))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return folder / "catalog.json"
