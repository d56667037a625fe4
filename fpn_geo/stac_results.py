"""STAC out: an item beside each scene's outputs, and one static catalog of a folder's results.

The item (`NAME.item.json` beside `NAME.gpkg`) says where the buildings are (geometry: the scene's valid
footprint), what made them (processing: software, version and run id; ml-model: the checkpoint) and what they
are (label: vector building footprints); it links the source item it was derived from. It also carries the
skip rule's key (`fpn:source`: source item id, asset key and the asset's identity), so a
nightly run can tell a scene already done from a new or changed one without touching its pixels (the checkpoint
and output parameters it was made with are in the GeoPackage's provenance, `fpn_geo.provenance.made_with`).

`write_results_catalog` lists every item of the folder in `catalog.json`; each write is atomic (temporary file,
then rename), so a STAC browser, QGIS or pystac walking the folder never sees a half-written catalog.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import rasterio
import rasterio.features
import shapely
import shapely.geometry
from affine import Affine

from fpn_geo import __version__
from fpn_geo.errors import OutputError
from fpn_geo.outputs import write_text_atomic

ITEM_SUFFIX = ".item.json"
CATALOG = "catalog.json"
CATALOG_ID = "fpn-geo-buildings"
PROCESSING_EXT = "https://stac-extensions.github.io/processing/v1.1.0/schema.json"
GPKG_MEDIA_TYPE = "application/geopackage+sqlite3"
FOOTPRINT_PX = 512  # the valid-data mask is read at most this many pixels a side (a COG reads an overview)


def source_key(item_id: str | None, asset: str | None, identity: str | None) -> dict:
    """Which source a scene's outputs were made from: the STAC item, the asset key and the asset's identity. With
    the checkpoint and output parameters that the GeoPackage records (`fpn_geo.provenance.made_with`), the whole
    of the skip rule for a catalogued scene."""
    return {"item": item_id, "asset": asset, "identity": identity}


def item_path(gpkg: str | Path) -> Path:
    """Where a scene's STAC item goes: NAME.item.json beside NAME.gpkg."""
    gpkg = Path(gpkg)
    return gpkg.with_name(gpkg.stem + ITEM_SUFFIX)


def is_current(gpkg: str | Path, key: dict) -> bool:
    """True when the scene's GeoPackage exists and its item records exactly this source `key`; a key without an
    identity (a remote file nobody versions) never is."""
    if not key.get("identity") or not Path(gpkg).is_file():
        return False
    try:
        recorded = json.loads(item_path(gpkg).read_text())["properties"].get("fpn:source")
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return recorded == key


def valid_footprint(path: str, max_px: int = FOOTPRINT_PX) -> tuple[shapely.Geometry, Any]:
    """(footprint, crs): where the scene has valid pixels, traced on its mask read at most `max_px` a side (a COG
    answers from an overview, so a remote scene costs a few KB); the raster's extent when it has no mask."""
    from fpn_geo.reading import all_valid

    with rasterio.open(path) as src:
        if all_valid(src):
            return shapely.box(*src.bounds), src.crs
        f = max(1, math.ceil(max(src.width, src.height) / max_px))
        h, w = math.ceil(src.height / f), math.ceil(src.width / f)
        valid = (src.dataset_mask(out_shape=(h, w)) > 0).astype(np.uint8)
        transform = src.transform * Affine.scale(src.width / w, src.height / h)
        crs = src.crs
    parts = [shapely.geometry.shape(g) for g, v in rasterio.features.shapes(valid, mask=valid > 0,
                                                                             transform=transform) if v]
    if not parts:
        return shapely.Polygon(), crs
    return shapely.make_valid(shapely.unary_union(parts)), crs


def to_wgs84(geom: shapely.Geometry, crs) -> shapely.Geometry:
    """`geom` in longitude/latitude (STAC geometries are WGS84)."""
    t = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


def _mlm(item, meta) -> None:
    """The ml-model extension: the checkpoint's architecture, input bands and classes."""
    from pystac.extensions.mlm import (
        InputStructure,
        MLMExtension,
        ModelInput,
        ModelOutput,
        ResultStructure,
        TaskType,
    )
    from pystac.extensions.raster import DataType

    size = 512
    model_input = ModelInput.create(
        name="image", bands=[f"B{b}" for b in meta.bands],
        input=InputStructure.create(shape=[-1, len(meta.bands), size, size], dim_order=["batch", "bands", "height",
                                    "width"], data_type=DataType.FLOAT32),
    )
    output = ModelOutput.create(
        name="classes", tasks=[TaskType.SEMANTIC_SEGMENTATION],
        result=ResultStructure.create(shape=[-1, len(meta.classes), size, size],
                                      dim_order=["batch", "channel", "height", "width"], data_type=DataType.FLOAT32),
    )
    MLMExtension.ext(item, add_if_missing=True).apply(
        name=f"fpn-resnet{meta.depth}", architecture=f"FPN-ResNet-{meta.depth}",
        tasks=[TaskType.SEMANTIC_SEGMENTATION, TaskType.INSTANCE_SEGMENTATION], input=[model_input], output=[output],
        framework="pytorch",
    )
    item.properties["fpn:checkpoint_sha256"] = meta.weights_sha256
    item.properties["fpn:model_classes"] = list(meta.classes)


def scene_item(
    *, name: str, gpkg: Path, footprint_wgs84: shapely.Geometry, when: str | None, provenance: dict, meta,
    key: dict, buildings: int, cog: Path | None = None, quicklook: Path | None = None,
    source_href: str | None = None,
):
    """The pystac Item of one segmented scene (hrefs relative to the item's folder)."""
    import pystac
    from pystac.extensions.label import LabelExtension, LabelType

    geom = footprint_wgs84 if not footprint_wgs84.is_empty else None
    dt = datetime.fromisoformat(when) if when else datetime.now(timezone.utc)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    item = pystac.Item(
        id=name, geometry=shapely.geometry.mapping(geom) if geom is not None else None,
        bbox=list(geom.bounds) if geom is not None else None, datetime=dt, properties={},
    )
    item.add_asset("buildings", pystac.Asset(
        href=gpkg.name, media_type=GPKG_MEDIA_TYPE, roles=["data", "labels"], title="building footprints",
    ))
    if cog is not None:
        item.add_asset("probability", pystac.Asset(
            href=cog.name, media_type=pystac.MediaType.COG, roles=["data"], title="building probability x 255",
        ))
    if quicklook is not None:
        item.add_asset("quicklook", pystac.Asset(href=quicklook.name, media_type=pystac.MediaType.PNG,
                                                 roles=["overview"]))
    LabelExtension.ext(item, add_if_missing=True).apply(
        label_description="building footprints found by an FPN-ResNet segmenter", label_type=LabelType.VECTOR,
        label_properties=None, label_tasks=["segmentation"], label_methods=["automated"],
    )
    item.stac_extensions.append(PROCESSING_EXT)
    run_id = provenance.get("run_id")
    item.properties.update({
        "processing:software": {"fpn-geo": str(provenance.get("version") or __version__)},
        "processing:lineage": f"fpn-geo run {run_id}: building footprints segmented from "
                              f"{key.get('item') or name} (asset {key.get('asset') or 'file'})",
        "processing:level": "L4",
        "fpn:run_id": run_id,
        "fpn:buildings": buildings,
        "fpn:source": key,
    })
    _mlm(item, meta)
    if source_href:
        item.add_link(pystac.Link(rel="derived_from", target=source_href, media_type=pystac.MediaType.JSON,
                                  title=key.get("item")))
    return item


def write_item(item, path: Path) -> Path:
    """Write an item atomically at `path` (its assets' hrefs stay relative to it)."""
    d = item.to_dict(include_self_link=False, transform_hrefs=False)
    return write_text_atomic(path, json.dumps(d, indent=1))


def _read_item(path: Path):
    import pystac

    try:
        return pystac.Item.from_file(str(path))
    except Exception as e:  # a foreign or broken JSON beside the outputs: say which, do not guess
        raise OutputError(f"{path} is not a readable STAC item ({e}); remove it or move it out of the folder") \
            from None


def write_results_catalog(folder: str | Path, title: str = "fpn-geo building footprints") -> Path:
    """folder/catalog.json listing every NAME.item.json of the folder, written atomically; the items themselves
    get their root and parent links. Returns the catalog's path."""
    import pystac

    folder = Path(folder).resolve()
    catalog = pystac.Catalog(id=CATALOG_ID, description=title, title=title,
                             catalog_type=pystac.CatalogType.SELF_CONTAINED)
    catalog.set_self_href(str(folder / CATALOG))
    items = [(path, _read_item(path)) for path in sorted(folder.glob("*" + ITEM_SUFFIX))]
    for path, item in items:
        catalog.add_item(item)
        item.set_self_href(str(path))
    for path, item in items:
        d = item.to_dict(include_self_link=False, transform_hrefs=True)
        write_text_atomic(path, json.dumps(d, indent=1))
    d = catalog.to_dict(include_self_link=False, transform_hrefs=True)
    return write_text_atomic(folder / CATALOG, json.dumps(d, indent=1))


def validate_results(catalog_path: str | Path) -> list[str]:
    """Validate the catalog and its items with pystac's validator; returns the extension schemas it could not
    check. Core STAC (item, catalog, GeoJSON) validates offline against the schemas pystac ships; an extension
    schema (label, processing, ml-model) is fetched from its URL, and where that fails (no network) it is
    skipped and listed instead of failing the check. pystac >= 1.16 ships some extension schemas whose $refs
    point at other extensions' URLs: one that cannot be resolved offline skips that extension the same way.
    Raises pystac's STACValidationError on invalid STAC."""
    import pystac
    from pystac.validation.stac_validator import GetSchemaError, JsonSchemaSTACValidator
    from referencing.exceptions import Unresolvable  # jsonschema's $ref resolver (jsonschema >= 4.18)

    skipped: list[str] = []

    class OfflineValidator(JsonSchemaSTACValidator):
        def validate_extension(self, stac_dict, stac_object_type, stac_version, extension_id, href=None):
            try:
                return super().validate_extension(stac_dict, stac_object_type, stac_version, extension_id, href)
            except (GetSchemaError, Unresolvable):
                skipped.append(extension_id)
                return None

    catalog = pystac.Catalog.from_file(str(catalog_path))
    validator = OfflineValidator()
    # pystac logs a traceback for each schema it cannot fetch, urllib3 each retry: the list returned says it once.
    quiet = [logging.getLogger(n) for n in ("pystac.validation.stac_validator", "urllib3.connectionpool")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.CRITICAL)
    try:
        catalog.validate(validator=validator)
        for item in catalog.get_items(recursive=True):
            item.validate(validator=validator)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    return sorted(set(skipped))
