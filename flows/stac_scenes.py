"""The catalogued side of `segment-scenes`: the scenes a run takes (paths, or a STAC source), the STAC item each
finished scene gets, and the building map. Library calls in order; the logic is in fpn_geo.stac,
fpn_geo.stac_results and fpn_geo.building_map."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.scenes import drop_own_outputs, list_scenes, scene_name
from fpn_geo.building_map import MapPart
from fpn_geo.errors import InputError
from fpn_geo.geopackage import read_provenance
from fpn_geo.model.meta import ModelMeta
from fpn_geo.stac import StacScene, StacSource, apply_remote_gdal_options, redact, resolve_stac
from fpn_geo.stac_results import (
    item_path,
    scene_item,
    source_key,
    to_wgs84,
    valid_footprint,
    write_item,
)


@dataclass
class SceneSet:
    """The scenes of one run: GDAL paths in order, each one's output name, its STAC source (catalogued scenes
    only) and the fpn-geo outputs found among the inputs and left out."""

    paths: list[str]
    names: dict[str, str]
    sources: dict[str, StacScene] = field(default_factory=dict)
    ours: list[str] = field(default_factory=list)

    def label(self, path: str) -> str:
        """How logs name a scene: its STAC item and asset href (without credentials), else its path."""
        source = self.sources.get(path)
        return source.display if source else redact(path)


def gather_scenes(scenes: str | list[str] | None, stac: StacSource | dict[str, Any] | None) -> SceneSet:
    """The run's scenes from `scenes` (folder, glob, manifest, list) or from `stac` (one of them)."""
    if (scenes is None) == (stac is None):
        raise InputError("give either scenes (a folder, glob, manifest or list) or stac (a STAC source), not "
                         f"{'both' if scenes is not None else 'neither'}")
    if stac is not None:
        if not isinstance(stac, StacSource):
            from pydantic import ValidationError

            try:
                stac = StacSource.model_validate(dict(stac))
            except ValidationError as e:
                first = e.errors()[0]
                where = ".".join(str(x) for x in first["loc"])
                raise InputError(f"stac.{where}: {first['msg']}; expected e.g. {{\"url\": ..., \"asset\": "
                                 "\"visual\"}") from None
        apply_remote_gdal_options()  # the flow process opens each scene to plan it and draw its footprint
        found = resolve_stac(stac)
        return SceneSet([s.path for s in found], {s.path: scene_name(s.item_id) for s in found},
                        {s.path: s for s in found})
    assert scenes is not None
    paths, ours = drop_own_outputs(list_scenes(scenes))
    return SceneSet(paths, {p: scene_name(p) for p in paths}, {}, ours)


def source_of(path: str, source: StacScene | None, input_sha256: str | None) -> dict:
    """The skip rule's key for a scene: its item, asset and identity; a plain file's sha256."""
    if source is None:
        return source_key(None, None, f"sha256:{input_sha256}" if input_sha256 else None)
    return source_key(source.item_id, source.asset_key, source.identity)


def write_scene_stac(path: str, out: Path, name: str, source: StacScene | None, cog: Path | None,
                     quicklook: str | None) -> Path:
    """Write NAME.item.json beside the scene's GeoPackage: its footprint, assets, source link and the
    label/processing/ml-model fields, from what the GeoPackage's provenance records."""
    prov = read_provenance(out) or {}
    meta_dict = prov.get("checkpoint_meta")
    meta = ModelMeta.from_dict(json.loads(meta_dict) if isinstance(meta_dict, str) else meta_dict or {})
    footprint, crs = valid_footprint(path)
    item = scene_item(
        name=name, gpkg=out, footprint_wgs84=to_wgs84(footprint, crs),
        when=source.item_datetime if source else None, provenance=prov, meta=meta,
        key=source_of(path, source, prov.get("input_sha256")), buildings=int(prov.get("buildings") or 0),
        cog=cog if cog is not None and cog.is_file() else None,
        quicklook=Path(quicklook) if quicklook else None, source_href=source.item_href if source else None,
    )
    return write_item(item, item_path(out))


def map_part(name: str, out: Path, source: StacScene | None) -> MapPart:
    """A scene's GeoPackage for the building map, with its STAC item's footprint where it has one (a scene with a
    nodata collar: the edge rule measures from where its data ends, not from the raster's extent)."""
    footprint = None
    try:
        geometry = json.loads(item_path(out).read_text()).get("geometry")
        if geometry:
            import shapely.geometry

            footprint = shapely.geometry.shape(geometry)
    except (OSError, ValueError):
        pass
    return MapPart(name, out, source.item_id if source else None, footprint,
                   "EPSG:4326" if footprint is not None else None)


def add_stac_arguments(parser) -> None:
    """`python -m flows.segment scenes --stac URL ...`: the STAC source as command-line options."""
    g = parser.add_argument_group("STAC source (instead of SCENES)")
    g.add_argument("--stac", metavar="URL", help="STAC API landing page, or static catalog/collection/ItemCollection")
    g.add_argument("--asset", default="visual", help="the item asset to segment (default: visual)")
    g.add_argument("--collections", help="comma-separated collection ids (API search)")
    g.add_argument("--bbox", help="west,south,east,north in WGS84 (API search)")
    g.add_argument("--intersects", metavar="GEOJSON", help="a GeoJSON geometry (API search)")
    g.add_argument("--datetime", help="e.g. 2024-01-01/2024-02-01 or 2024-01-01/.. (API search)")
    g.add_argument("--query", metavar="JSON", help="Query extension object (API search)")
    g.add_argument("--filter", metavar="CQL2-JSON", help="CQL2-JSON filter (API search)")
    g.add_argument("--max-items", type=int)


def _json_arg(name: str, text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"--{name} is not JSON ({e.msg} at character {e.pos}): {text[:80]}") from None


def stac_from_args(args) -> StacSource | None:
    """The StacSource the options describe, None without --stac; InputError on a malformed option."""
    if not args.stac:
        return None
    from pydantic import ValidationError

    try:
        bbox = [float(v) for v in args.bbox.split(",")] if args.bbox else None
    except ValueError:
        raise InputError(f"--bbox takes four numbers west,south,east,north; got {args.bbox}") from None
    try:
        return StacSource(
            url=args.stac, asset=args.asset, bbox=bbox, datetime=args.datetime, max_items=args.max_items,
            collections=[c.strip() for c in args.collections.split(",")] if args.collections else None,
            intersects=_json_arg("intersects", args.intersects), query=_json_arg("query", args.query),
            filter=_json_arg("filter", args.filter),
        )
    except ValidationError as e:
        first = e.errors()[0]
        raise InputError(f"--{first['loc'][0]}: {first['msg']}") from None
