"""One building map from many scenes' GeoPackages: each building once where scenes overlap, streamed scene by scene.

The rule an analyst can predict. Scenes are added in the order given (the flow gives item-id or file order).
Two detections from different scenes are the same building when their intersection over union is >= 0.5, or
when one of them is cut by its own scene's edge and at least half of it lies inside the other (a building that
a scene's edge cuts in two is a piece there, and a whole building in the neighbour). Of a matched pair, the map
keeps the detection that lies farther from its own scene's edge (`edge_m`, metres from the polygon to the edge
of its scene's footprint): a model sees the most context there. On a tie the detection already in the map
stays. A detection is added only if it beats every map building it matches; those it beats leave the map.

Streaming: a scene's buildings are read, compared with the map's buildings inside that scene's footprint (the
map's R-tree answers the query), and written; nothing else is held, so memory follows the largest scene, not
the number of scenes. The map's `map_scenes` table lists every scene that went in (name, item, GeoPackage,
its run id, buildings read and kept); rerun with the same scenes plus new ones, the map is copied and only the
new scenes are added (a changed or removed scene rebuilds it).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from affine import Affine

from fpn_geo import __version__
from fpn_geo.geopackage import BUILDINGS, GPKG_VERSION, PROVENANCE, read_provenance, register_style, write_errors
from fpn_geo.georef import bounds_utm
from fpn_geo.outputs import PendingOutput, verify_geopackage
from fpn_geo.provenance import new_run_id, utc_now

MAP_SCENES = "map_scenes"
MAP_PROVENANCE = "provenance"
MATCH_IOU = 0.5
CUT_INSIDE = 0.5  # a piece cut by its scene's edge matches when at least this share of it lies in the other
EDGE_CUT_M = 0.01  # a polygon this close to its scene's edge touches it (it was cut there)
RULE = (f"same building: IoU >= {MATCH_IOU}, or a piece cut by its scene edge with >= {CUT_INSIDE:.0%} inside the "
        "other; kept: the detection farther from its own scene's edge (edge_m); tie: the one already in the map")


@dataclass(frozen=True)
class MapPart:
    """One scene's GeoPackage for the map. footprint: where the scene has valid pixels, in `footprint_crs`;
    None: the raster's extent, from the GeoPackage's provenance."""

    scene: str
    gpkg: Path
    item_id: str | None = None
    footprint: shapely.Geometry | None = None
    footprint_crs: Any = None


@dataclass(frozen=True)
class MapSummary:
    """What `build_map` did: buildings in the map, scenes added now, scenes kept from the previous map."""

    out: Path
    buildings: int
    added: tuple[str, ...]
    reused: tuple[str, ...]


KEPT = ("run_id", "input_path", "input_sha256", "input_crs", "input_transform", "input_width", "input_height",
        "checkpoint_sha256")  # what the map uses of a scene's provenance: all of it, a thousand times, would grow


def _provenance(gpkg: Path) -> dict:
    """What the map uses of the scene GeoPackage's provenance row (`KEPT`), read with SQLite (GDAL's open costs
    more than the read here, and a map reads a thousand of them); {} when it has none."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{gpkg}?mode=ro", uri=True)) as db:
            db.row_factory = sqlite3.Row
            row = db.execute(f"SELECT * FROM {PROVENANCE} ORDER BY rowid DESC LIMIT 1").fetchone()
    except sqlite3.Error:
        prov = read_provenance(gpkg) or {}
        return {k: prov[k] for k in KEPT if k in prov}
    return {k: row[k] for k in row.keys() if k in KEPT} if row else {}


def _extent(prov: dict) -> tuple[shapely.Geometry, str]:
    """The raster extent a scene GeoPackage's provenance records, and its CRS."""
    t = prov["input_transform"]
    t = json.loads(t) if isinstance(t, str) else t
    a = Affine(*t[:6])
    w, h = int(prov["input_width"]), int(prov["input_height"])
    corners = [a * (0, 0), a * (w, 0), a * (w, h), a * (0, h)]
    return shapely.Polygon(corners), prov["input_crs"]


def edge_distances(geoms: np.ndarray, footprint: shapely.Geometry) -> np.ndarray:
    """Metres (in a metric CRS) from each polygon to the footprint's edge; 0 for a polygon touching it."""
    return shapely.distance(geoms, footprint.boundary)


def _scene_buildings(part: MapPart, prov: dict, crs) -> tuple[gpd.GeoDataFrame, shapely.Geometry]:
    """The part's buildings in the map's CRS with `edge_m`, and its footprint in the map's CRS."""
    footprint, fp_crs = (part.footprint, part.footprint_crs) if part.footprint is not None else _extent(prov)
    gdf = pyogrio.read_dataframe(part.gpkg, layer=BUILDINGS)
    metric = bounds_utm(fp_crs, footprint.bounds)
    fp_metric = gpd.GeoSeries([footprint], crs=fp_crs).to_crs(metric).iloc[0]
    edge = edge_distances(gdf.geometry.to_crs(metric).to_numpy(), fp_metric) if len(gdf) else np.zeros(0)
    out = gdf.to_crs(crs)
    out = gpd.GeoDataFrame({
        "scene": part.scene, "item_id": part.item_id, "scene_id": out.get("id", pd.Series(range(len(out)))).to_numpy(),
        "score": out["score"].to_numpy(), "area_m2": out["area_m2"].to_numpy(), "edge_m": np.round(edge, 3),
    }, geometry=out.geometry.to_numpy(), crs=crs)
    return out, gpd.GeoSeries([footprint], crs=fp_crs).to_crs(crs).iloc[0]


def _same(a: np.ndarray, b: np.ndarray, edge_a: np.ndarray, edge_b: np.ndarray) -> np.ndarray:
    """Which pairs (a[i], b[i]) are the same building (the module's rule)."""
    inter = shapely.area(shapely.intersection(a, b))
    area_a, area_b = shapely.area(a), shapely.area(b)
    union = area_a + area_b - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    cut_a = (edge_a <= EDGE_CUT_M) & (inter >= CUT_INSIDE * area_a)
    cut_b = (edge_b <= EDGE_CUT_M) & (inter >= CUT_INSIDE * area_b)
    return (iou >= MATCH_IOU) | cut_a | cut_b


def resolve_overlap(new: gpd.GeoDataFrame, old: gpd.GeoDataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(keep: bool per new detection, drop: index labels of `old` to remove) under the module's rule."""
    keep = np.ones(len(new), bool)
    if not len(new) or not len(old):
        return keep, np.zeros(0, old.index.dtype)
    i_new, i_old = old.sindex.query(new.geometry.to_numpy(), predicate="intersects")
    if not len(i_new):
        return keep, np.zeros(0, old.index.dtype)
    e_new, e_old = new["edge_m"].to_numpy()[i_new], old["edge_m"].to_numpy()[i_old]
    same = _same(new.geometry.to_numpy()[i_new], old.geometry.to_numpy()[i_old], e_new, e_old)
    i_new, i_old, e_new, e_old = i_new[same], i_old[same], e_new[same], e_old[same]
    loses = e_new <= e_old  # a tie keeps the building already in the map
    keep[np.unique(i_new[loses])] = False
    beaten = keep[i_new] & ~loses
    return keep, old.index.to_numpy()[np.unique(i_old[beaten])]


def _map_scenes(path: Path) -> pd.DataFrame | None:
    """The `map_scenes` table of an existing map, or None."""
    try:
        if MAP_SCENES not in {name for name, _ in pyogrio.list_layers(path)}:
            return None
        return pyogrio.read_dataframe(path, layer=MAP_SCENES)
    except Exception:  # a missing or foreign file: build the map anew
        return None


def _reusable(out: Path, parts: Sequence[MapPart], run_ids: dict[str, str | None], crs) -> pd.DataFrame | None:
    """The previous map's scene rows when every scene in it is among `parts`, unchanged (same run id, item and
    GeoPackage) and the map is in `crs`; else None (rebuild)."""
    table = _map_scenes(out) if out.is_file() else None
    if table is None or not len(table):
        return None
    try:
        same_crs = pyogrio.read_info(out, layer=BUILDINGS)["crs"] == gpd.GeoSeries([], crs=crs).crs.to_string()
    except Exception:
        return None
    now = {p.scene: p for p in parts}
    for row in table.itertuples():
        part = now.get(row.scene)
        if part is None or not run_ids.get(row.scene) or run_ids[row.scene] != row.run_id \
                or str(part.gpkg) != row.gpkg:
            return None
    return table if same_crs else None


def _write(tmp: Path, frame: gpd.GeoDataFrame, first: bool) -> None:
    pyogrio.write_dataframe(
        frame, tmp, layer=BUILDINGS, driver="GPKG", geometry_type="Polygon", append=not first,
        **({"dataset_options": {"VERSION": GPKG_VERSION}} if first else {}),
    )


def _empty(crs) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({
        "id": pd.Series([], dtype="int64"), "scene": pd.Series([], dtype=str), "item_id": pd.Series([], dtype=str),
        "scene_id": pd.Series([], dtype="int64"), "score": [], "area_m2": [], "edge_m": [],
    }, geometry=[], crs=crs)


class _Held:
    """The map's newest buildings, held until `flush_at` of them wait (each GeoPackage write costs about as much as
    reading a scene), indexed -1, -2, ... so they never clash with the file's fids."""

    def __init__(self, tmp: Path, flush_at: int) -> None:
        self.tmp, self.flush_at, self.count = tmp, flush_at, 0
        self.frames: list[gpd.GeoDataFrame] = []
        self.frame: gpd.GeoDataFrame | None = None

    def _all(self) -> gpd.GeoDataFrame | None:
        if self.frame is None and self.frames:
            self.frame = pd.concat(self.frames)
            self.frames = [self.frame]
        return self.frame

    def near(self, bounds) -> gpd.GeoDataFrame | None:
        frame = self._all()
        return None if frame is None else frame.iloc[frame.sindex.query(shapely.box(*bounds))]

    def add(self, kept: gpd.GeoDataFrame) -> None:
        kept.index = pd.RangeIndex(-self.count - 1, -self.count - 1 - len(kept), -1)
        self.count += len(kept)
        self.frames.append(kept)
        self.frame = None
        if sum(len(f) for f in self.frames) >= self.flush_at:
            self.flush()

    def drop(self, labels) -> None:
        frame = self._all()
        if frame is not None and len(labels):
            self.frame = frame.drop(labels)
            self.frames = [self.frame]

    def flush(self) -> None:
        frame = self._all()
        if frame is not None and len(frame):
            _write(self.tmp, frame, first=False)
        self.frames, self.frame = [], None


def _delete(tmp: Path, fids) -> None:
    if len(fids):
        with contextlib.closing(sqlite3.connect(tmp)) as db, db:
            db.executemany(f"DELETE FROM {BUILDINGS} WHERE fid = ?", [(int(f),) for f in fids])


def _next_id(tmp: Path) -> int:
    with contextlib.closing(sqlite3.connect(tmp)) as db:
        row = db.execute(f"SELECT MAX(id) FROM {BUILDINGS}").fetchone()
    return int(row[0]) + 1 if row and row[0] is not None else 0


def build_map(parts: Sequence[MapPart], out: str | Path, crs: str = "EPSG:4326", flush_at: int = 20_000) -> MapSummary:
    """Write (or update) the building map `out` from the scenes' GeoPackages, in `crs`; atomic like every
    output. See the module's docstring for the rule and the update. At most `flush_at` buildings wait in memory
    to be written."""
    out = Path(out)
    provs = {p.scene: _provenance(p.gpkg) for p in parts}
    run_ids = {name: prov.get("run_id") for name, prov in provs.items()}
    previous = _reusable(out, parts, run_ids, crs)
    done = set(previous["scene"]) if previous is not None else set()
    rows = [] if previous is None else previous.to_dict("records")
    pending = PendingOutput(out, verify=verify_geopackage)
    tmp = pending.tmp
    added: list[str] = []
    with pending.discarded_on_failure(), write_errors(out):
        if previous is not None:
            shutil.copyfile(out, tmp)
            with contextlib.closing(sqlite3.connect(tmp)) as db, db:
                db.execute(f"DROP TABLE IF EXISTS {MAP_SCENES}")
                db.execute(f"DELETE FROM gpkg_contents WHERE table_name='{MAP_SCENES}'")
                db.execute(f"DROP TABLE IF EXISTS {MAP_PROVENANCE}")
                db.execute(f"DELETE FROM gpkg_contents WHERE table_name='{MAP_PROVENANCE}'")
                if db.execute("SELECT 1 FROM sqlite_master WHERE name='layer_styles'").fetchone():
                    db.execute("DELETE FROM layer_styles")  # register_style adds the one default again
        else:
            _write(tmp, _empty(crs), first=True)
        next_id = _next_id(tmp)
        held = _Held(tmp, flush_at)
        for part in parts:
            if part.scene in done:
                continue
            prov = provs[part.scene]
            new, footprint = _scene_buildings(part, prov, crs)
            bounds = tuple(footprint.bounds)
            old = pyogrio.read_dataframe(tmp, layer=BUILDINGS, bbox=bounds, fid_as_index=True)
            near = held.near(bounds)
            if near is not None and len(near):
                old = pd.concat([old, near]) if len(old) else near
            keep, drop = resolve_overlap(new, old)
            if len(drop):
                held.drop(drop[drop < 0])
                _delete(tmp, drop[drop >= 0])
            kept = new[keep].copy()
            kept.insert(0, "id", np.arange(next_id, next_id + len(kept), dtype="int64"))
            next_id += len(kept)
            if len(kept):
                held.add(kept)
            rows.append({
                "scene": part.scene, "item_id": part.item_id, "gpkg": str(part.gpkg), "run_id": prov.get("run_id"),
                "input_path": prov.get("input_path"), "input_sha256": prov.get("input_sha256"),
                "checkpoint_sha256": prov.get("checkpoint_sha256"), "buildings_read": len(new),
                "buildings_added": int(keep.sum()), "map_buildings_replaced": len(drop), "added_utc": utc_now(),
            })
            added.append(part.scene)
        held.flush()
        pyogrio.write_dataframe(pd.DataFrame(rows), tmp, layer=MAP_SCENES, driver="GPKG")
        with contextlib.closing(sqlite3.connect(tmp)) as db:
            total = int(db.execute(f"SELECT COUNT(*) FROM {BUILDINGS}").fetchone()[0])
        record = {"run_id": new_run_id(), "finished_utc": utc_now(), "software": "fpn-geo", "version": __version__,
                  "crs": crs, "scenes": len(rows), "buildings": total, "rule": RULE}
        pyogrio.write_dataframe(pd.DataFrame([record]), tmp, layer=MAP_PROVENANCE, driver="GPKG")
        with contextlib.closing(sqlite3.connect(tmp)) as db, db:
            register_style(db)
        pending.commit()
    return MapSummary(out, total, tuple(added), tuple(sorted(done)))
