"""The GeoPackage: buildings layer, provenance table, metadata extension record, default QGIS style.

Everything is written to a hidden temporary file beside the target and renamed over it only at
the end: a failed run never leaves half a GeoPackage, nor touches an existing good one.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyogrio
import pyogrio.errors

from fpn_geo.errors import OutputError
from fpn_geo.outputs import PendingOutput, atomic_output, temp_path, verify_geopackage

STYLE_QML = (Path(__file__).parent / "styles" / "buildings.qml").read_text()
BUILDINGS = "buildings"
PROVENANCE = "provenance"
# GeoPackage 1.2 has everything we use (attributes tables, metadata extension, R-tree). GDAL >= 3.7 writes 1.4
# by default, which GDAL <= 3.6 (QGIS 3.22 LTR on Debian 12, Ubuntu 22.04) flags on every open as
# "may only be partially supported".
GPKG_VERSION = "1.2"
PROVENANCE_URI = "https://github.com/fpn-geo/fpn-geo/provenance/1"
QGIS_METADATA_URI = "http://mrcc.com/qgis.dtd"  # what QGIS looks for to fill Layer Properties > Metadata


def temp_sibling(final: Path, suffix: str = "") -> Path:
    """A hidden file in the target's folder (`fpn_geo.outputs.temp_path`; `suffix` is kept for old callers)."""
    return temp_path(final)


WRITE_ERRORS = (OSError, sqlite3.Error, pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError,
                pyogrio.errors.FieldError, pyogrio.errors.FeatureError)


@contextlib.contextmanager
def write_errors(final: Path):
    """GDAL, SQLite and OS write failures (a full disk, above all) as one-line OutputErrors."""
    try:
        yield
    except WRITE_ERRORS as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise OutputError(f"cannot write {final}: {first[:200]}; nothing was replaced") from e


FLUSH_AT = 20_000  # buildings held before one write: one write of 17,558 took 0.09 s, 200 writes of the same 2.8 s


class GeoPackageWriter:
    """Stream building batches into a temporary GeoPackage; `commit()` finishes and renames it into place.
    `path` was checked by the caller (`fpn_geo.outputs.scene_outputs`, through `SceneWriter`)."""

    def __init__(self, path: str | Path, crs, flush_at: int = FLUSH_AT) -> None:
        self.final = Path(path)
        self.pending = PendingOutput(self.final, verify=verify_geopackage)
        self.tmp = self.pending.tmp
        self.crs = crs
        self.count = 0
        self.flush_at = flush_at
        self.buffer: list[gpd.GeoDataFrame] = []

    def append(self, buildings: gpd.GeoDataFrame) -> None:
        """Ids are given in arrival order, which is deterministic: the same inputs give the same ids. Buildings are
        held until `flush_at` of them are waiting: each write opens the file, about 10 ms whatever its size."""
        if buildings.empty:
            return
        gdf = buildings.copy()
        gdf.insert(0, "id", range(self.count, self.count + len(gdf)))
        self.buffer.append(gdf[["id", "score", "area_m2", "geometry"]].set_crs(self.crs, allow_override=True))
        self.count += len(gdf)
        if sum(len(f) for f in self.buffer) >= self.flush_at:
            self.flush()

    def flush(self) -> None:
        """Write what is held (the first write creates the layer, also when there is nothing to write)."""
        if not self.buffer and self.tmp.exists():
            return
        frame = (
            pd.concat(self.buffer, ignore_index=True) if self.buffer
            else gpd.GeoDataFrame({"id": pd.Series([], dtype="int64"), "score": [], "area_m2": []}, geometry=[],
                                  crs=self.crs)
        )
        append = self.tmp.exists()
        with write_errors(self.final):
            pyogrio.write_dataframe(
                frame, self.tmp, layer=BUILDINGS, driver="GPKG", geometry_type="Polygon", append=append,
                **({} if append else {"dataset_options": {"VERSION": GPKG_VERSION}}),
            )
        self.buffer = []

    def finish(self, provenance: dict) -> None:
        """Write provenance, metadata and style into the temporary file and verify it; nothing is renamed yet.

        Use with other outputs that must appear together: finish (and verify) them all, then `commit()` each,
        under `fpn_geo.signals.interrupts_deferred()`.
        """
        with write_errors(self.final):
            self._finish(provenance)
        verify_geopackage(self.tmp)
        self.finished = True

    def commit(self, provenance: dict | None = None) -> Path:
        """Finish the GeoPackage (unless `finish` did), verify it and rename it into place."""
        if not getattr(self, "finished", False):
            if provenance is None:
                raise ValueError("commit() needs the provenance record unless finish(provenance) was called")
            self.finish(provenance)
        return self.pending.commit(verify=False)  # finish() verified it

    def _finish(self, provenance: dict) -> None:
        self.flush()
        row = {
            k: (json.dumps(v, default=str) if isinstance(v, (dict, list, tuple)) else v) for k, v in provenance.items()
        }
        pyogrio.write_dataframe(pd.DataFrame([row]), self.tmp, layer=PROVENANCE, driver="GPKG")
        with contextlib.closing(sqlite3.connect(self.tmp)) as db, db:
            register_metadata(db, provenance, crs=self.crs)
            register_style(db)

    def abort(self) -> None:
        self.pending.discard()

    def __enter__(self) -> GeoPackageWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self.tmp.exists():
            self.abort()


def _now() -> str:
    """GeoPackage timestamps: ISO 8601 UTC with milliseconds, as strftime('%Y-%m-%dT%H:%M:%fZ') writes them."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def register_metadata(db: sqlite3.Connection, record: dict, crs=None) -> None:
    """GeoPackage metadata extension (spec §F.8), two records scoped to the buildings layer.

    - the provenance record as JSON, for programs;
    - the same facts as QGIS layer metadata XML (md_standard_uri http://mrcc.com/qgis.dtd): the only kind QGIS
      reads, so analysts see title, abstract and provenance in Layer Properties > Metadata.
    The abstract also goes into gpkg_contents.description, which GDAL reports as the layer's DESCRIPTION.
    """
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS gpkg_metadata (
          id INTEGER CONSTRAINT m_pk PRIMARY KEY ASC NOT NULL,
          md_scope TEXT NOT NULL DEFAULT 'dataset',
          md_standard_uri TEXT NOT NULL,
          mime_type TEXT NOT NULL DEFAULT 'text/xml',
          metadata TEXT NOT NULL DEFAULT '');
        CREATE TABLE IF NOT EXISTS gpkg_metadata_reference (
          reference_scope TEXT NOT NULL,
          table_name TEXT,
          column_name TEXT,
          row_id_value INTEGER,
          timestamp DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
          md_file_id INTEGER NOT NULL,
          md_parent_id INTEGER,
          CONSTRAINT crmr_mfi_fk FOREIGN KEY (md_file_id) REFERENCES gpkg_metadata(id),
          CONSTRAINT crmr_mpi_fk FOREIGN KEY (md_parent_id) REFERENCES gpkg_metadata(id));
        """
    )
    for table in ("gpkg_metadata", "gpkg_metadata_reference"):
        exists = db.execute(
            "SELECT 1 FROM gpkg_extensions WHERE table_name=? AND extension_name='gpkg_metadata'", (table,)
        ).fetchone()
        if not exists:
            db.execute(
                "INSERT INTO gpkg_extensions(table_name, column_name, extension_name, definition, scope) "
                "VALUES (?, NULL, 'gpkg_metadata', 'http://www.geopackage.org/spec120/#extension_metadata', "
                "'read-write')",
                (table,),
            )
    abstract = describe(record)
    records = (
        (PROVENANCE_URI, "application/json", json.dumps(record, default=str, indent=1)),
        (QGIS_METADATA_URI, "text/xml", qgis_metadata_xml(db, record, abstract, crs)),
    )
    for uri, mime, text in records:
        cur = db.execute(
            "INSERT INTO gpkg_metadata(md_scope, md_standard_uri, mime_type, metadata) VALUES ('dataset', ?, ?, ?)",
            (uri, mime, text),
        )
        db.execute(
            "INSERT INTO gpkg_metadata_reference(reference_scope, table_name, timestamp, md_file_id) VALUES ('table', "
            "?, ?, ?)",
            (BUILDINGS, _now(), cur.lastrowid),
        )
    db.execute("UPDATE gpkg_contents SET description=? WHERE table_name=?", (abstract, BUILDINGS))


def _text(v) -> str:
    return json.dumps(v, default=str) if isinstance(v, (dict, list, tuple)) else str(v)


def describe(record: dict) -> str:
    """A human-readable abstract of the provenance record; keys that are missing are left out."""
    r = record.get
    params = r("parameters") if isinstance(r("parameters"), dict) else {}
    lines = [f"Building footprints segmented by {r('software', 'fpn-geo')} {r('version', '')}".rstrip()
             + (f" (git {r('git_commit')})" if r("git_commit") else "") + "."]
    if r("input_path"):
        lines.append(
            f"Input: {r('input_path')}" + (f" (sha256 {r('input_sha256')})" if r("input_sha256") else "") + "."
        )
    if r("checkpoint_path"):
        lines.append(
            f"Model: {r('checkpoint_path')}"
            + (f" (sha256 {r('checkpoint_sha256')})" if r("checkpoint_sha256") else "")
            + (f", chosen {r('model_selection')}" if r("model_selection") else "")
            + "."
        )
    if params:
        keys = [k for k in ("threshold", "min_area_m2", "simplify_m", "window", "overlap") if k in params]
        lines.append("Parameters: " + ", ".join(f"{k}={params[k]}" for k in keys) + ".")
    if r("buildings") is not None:
        lines.append(f"{r('buildings')} buildings.")
    if r("run_id"):
        lines.append(
            f"Run {r('run_id')}" + (f", {r('started_utc')} to {r('finished_utc')}" if r("started_utc") else "") + "."
        )
    lines.append("Full record: the 'provenance' table of this GeoPackage (also as JSON in gpkg_metadata).")
    return "\n".join(lines)


def qgis_metadata_xml(db: sqlite3.Connection, record: dict, abstract: str, crs=None) -> str:
    """QGIS layer metadata (QgsLayerMetadata::readMetadataXml): identifier, title, abstract, keywords, one
    history line per provenance field, CRS and extent of the buildings layer."""
    run_id = record.get("run_id")
    title = f"Buildings ({record.get('software', 'fpn-geo')}" + (f" run {run_id})" if run_id else ")")
    root = ET.Element("qgis", version="3.22.0")
    for tag, value in (
        ("identifier", run_id or ""), ("parentidentifier", ""), ("language", ""), ("type", "dataset"),
        ("title", title), ("abstract", abstract),
    ):
        ET.SubElement(root, tag).text = str(value)
    kw = ET.SubElement(root, "keywords", vocabulary="fpn-geo")
    for word in ("buildings", "building footprints", "segmentation", "fpn-geo"):
        ET.SubElement(kw, "keyword").text = word
    ET.SubElement(root, "links")
    for k, v in record.items():
        ET.SubElement(root, "history").text = f"{k}: {_text(v)}"
    ET.SubElement(root, "fees").text = ""
    ET.SubElement(root, "encoding").text = ""
    srs_id = None
    row = db.execute(
        "SELECT c.srs_id, c.min_x, c.min_y, c.max_x, c.max_y, s.organization, s.organization_coordsys_id, s.definition "
        "FROM gpkg_contents c LEFT JOIN gpkg_spatial_ref_sys s ON s.srs_id = c.srs_id WHERE c.table_name=?",
        (BUILDINGS,),
    ).fetchone()
    if row:
        srs_id, *bounds, org, code, definition = row
        wkt, authid = definition or "", f"{org}:{code}" if org and code is not None and org.upper() != "NONE" else ""
        if crs is not None:
            try:
                from pyproj import CRS

                c = CRS.from_user_input(crs)
                wkt = c.to_wkt()
                auth = c.to_authority()
                authid = f"{auth[0]}:{auth[1]}" if auth else authid
            except Exception:  # noqa: BLE001 - the gpkg_spatial_ref_sys definition is a fine fallback
                pass
        if wkt or authid:
            srs = ET.SubElement(ET.SubElement(root, "crs"), "spatialrefsys")
            ET.SubElement(srs, "wkt").text = wkt
            ET.SubElement(srs, "authid").text = authid
        if all(b is not None for b in bounds):
            ext = ET.SubElement(root, "extent")
            ET.SubElement(ext, "spatial", dimensions="2", crs=authid, minx=repr(bounds[0]), miny=repr(bounds[1]),
                          maxx=repr(bounds[2]), maxy=repr(bounds[3]), minz="0", maxz="0")
    ET.indent(root)
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(root, encoding="unicode")




def register_style(db: sqlite3.Connection, table: str = BUILDINGS) -> None:
    """QGIS's `layer_styles` table with one default style, so the layer opens styled."""
    db.execute(
        """CREATE TABLE IF NOT EXISTS layer_styles (
          id INTEGER PRIMARY KEY AUTOINCREMENT, f_table_catalog TEXT(256), f_table_schema TEXT(256),
          f_table_name TEXT(256), f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT, styleSLD TEXT,
          useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30),
          update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"""
    )
    if not db.execute("SELECT 1 FROM gpkg_contents WHERE table_name='layer_styles'").fetchone():
        db.execute(
            "INSERT INTO gpkg_contents(table_name, data_type, identifier, last_change) VALUES ('layer_styles', "
            "'attributes', 'layer_styles', ?)",
            (_now(),),
        )
    # QGIS finds the default style by table AND geometry column name: take the column GDAL actually wrote.
    row = db.execute("SELECT column_name FROM gpkg_geometry_columns WHERE table_name=?", (table,)).fetchone()
    db.execute(
        "INSERT INTO layer_styles(f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName, "
        "styleQML, styleSLD, useAsDefault, description, owner) VALUES ('', '', ?, ?, 'fpn-geo buildings', ?, '', 1, "
        "'Default style written by fpn-geo', 'fpn-geo')",
        (table, row[0] if row else "geom", STYLE_QML),
    )


def read_provenance(gpkg: str | Path) -> dict | None:
    """The provenance row of an fpn-geo GeoPackage, or None if there is no readable one."""
    try:
        if PROVENANCE not in {name for name, _ in pyogrio.list_layers(gpkg)}:
            return None
        df = pyogrio.read_dataframe(gpkg, layer=PROVENANCE)
    except Exception:  # a missing, partial or foreign file: not up to date, so it is redone
        return None
    return df.iloc[-1].to_dict() if len(df) else None


def merge_geopackages(parts: Sequence[tuple[str, str | Path]], out: str | Path, crs: str = "EPSG:4326") -> int:
    """Write the buildings of several scene GeoPackages, reprojected to `crs`, into one; adds a `scene` column.

    parts: (scene name, GeoPackage path). Atomic like every output: temporary file, then rename.
    """
    out = Path(out)
    frames = []
    for name, path in parts:
        gdf = pyogrio.read_dataframe(path, layer=BUILDINGS).to_crs(crs)
        gdf.insert(0, "scene", name)
        frames.append(gdf.rename(columns={"id": "scene_id"}))
    if frames:
        merged = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=crs)
    else:
        merged = gpd.GeoDataFrame({"scene": [], "scene_id": [], "score": [], "area_m2": []}, geometry=[], crs=crs)
    merged.insert(0, "id", range(len(merged)))
    with atomic_output(out, verify=verify_geopackage) as tmp, write_errors(out):
        pyogrio.write_dataframe(
            merged,
            tmp,
            layer=BUILDINGS,
            driver="GPKG",
            geometry_type="Polygon",
            dataset_options={"VERSION": GPKG_VERSION},
        )
        with contextlib.closing(sqlite3.connect(tmp)) as db, db:
            register_style(db)
    return len(merged)
