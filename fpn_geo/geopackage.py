"""The GeoPackage: buildings layer, provenance table, metadata extension record, default QGIS style.

Everything is written to a hidden temporary file beside the target and renamed over it only at
the end: a failed run never leaves half a GeoPackage, nor touches an existing good one.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from datetime import datetime, timezone
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyogrio

from fpn_geo.errors import OutputError

STYLE_QML = (Path(__file__).parent / "styles" / "buildings.qml").read_text()
BUILDINGS = "buildings"
PROVENANCE = "provenance"


def temp_sibling(final: Path, suffix: str) -> Path:
    """A hidden file in the target's folder, so the final rename never crosses filesystems."""
    return final.with_name(f".{final.stem}.{uuid.uuid4().hex[:8]}.tmp{suffix}")


def check_writable(final: Path) -> None:
    """Fail before any work if the folder cannot take the output (root ignores permission bits, so try it)."""
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"output folder {parent} cannot be created: {e.strerror or e}; it or a parent is not a folder") from e
    probe = temp_sibling(final, ".probe")
    try:
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise OutputError(f"output folder {parent} cannot be written: {e.strerror}") from e


class GeoPackageWriter:
    """Stream building batches into a temporary GeoPackage; `commit()` finishes and renames it into place."""

    def __init__(self, path: str | Path, crs) -> None:
        self.final = Path(path)
        check_writable(self.final)
        self.tmp = temp_sibling(self.final, ".gpkg")
        self.crs = crs
        self.count = 0

    def append(self, buildings: gpd.GeoDataFrame) -> None:
        """Ids are given in arrival order, which is deterministic: the same inputs give the same ids."""
        if buildings.empty and self.count == 0 and self.tmp.exists():
            return
        gdf = buildings.copy()
        gdf.insert(0, "id", range(self.count, self.count + len(gdf)))
        gdf = gdf[["id", "score", "area_m2", "geometry"]].set_crs(self.crs, allow_override=True)
        pyogrio.write_dataframe(
            gdf, self.tmp, layer=BUILDINGS, driver="GPKG", geometry_type="Polygon", append=self.tmp.exists()
        )
        self.count += len(gdf)

    def commit(self, provenance: dict) -> Path:
        if not self.tmp.exists():
            self.append(gpd.GeoDataFrame({"score": [], "area_m2": []}, geometry=[], crs=self.crs))
        row = {k: (json.dumps(v, default=str) if isinstance(v, (dict, list, tuple)) else v) for k, v in provenance.items()}
        pyogrio.write_dataframe(pd.DataFrame([row]), self.tmp, layer=PROVENANCE, driver="GPKG")
        with sqlite3.connect(self.tmp) as db:
            register_metadata(db, provenance)
            register_style(db)
        os.replace(self.tmp, self.final)
        return self.final

    def abort(self) -> None:
        for p in (self.tmp, Path(f"{self.tmp}-journal"), Path(f"{self.tmp}-wal"), Path(f"{self.tmp}-shm")):
            p.unlink(missing_ok=True)

    def __enter__(self) -> "GeoPackageWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self.tmp.exists():
            self.abort()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def register_metadata(db: sqlite3.Connection, record: dict) -> None:
    """GeoPackage metadata extension (spec §F.8): the provenance record as JSON, scoped to the buildings layer."""
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
                "VALUES (?, NULL, 'gpkg_metadata', 'http://www.geopackage.org/spec120/#extension_metadata', 'read-write')",
                (table,),
            )
    cur = db.execute(
        "INSERT INTO gpkg_metadata(md_scope, md_standard_uri, mime_type, metadata) VALUES ('dataset', ?, 'application/json', ?)",
        ("https://github.com/fpn-geo/fpn-geo/provenance/1", json.dumps(record, default=str, indent=1)),
    )
    db.execute(
        "INSERT INTO gpkg_metadata_reference(reference_scope, table_name, timestamp, md_file_id) VALUES ('table', ?, ?, ?)",
        (BUILDINGS, _now(), cur.lastrowid),
    )


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
            "INSERT INTO gpkg_contents(table_name, data_type, identifier, last_change) VALUES ('layer_styles', 'attributes', 'layer_styles', ?)",
            (_now(),),
        )
    db.execute(
        "INSERT INTO layer_styles(f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName, "
        "styleQML, styleSLD, useAsDefault, description, owner) VALUES ('', '', ?, 'geom', 'fpn-geo buildings', ?, '', 1, "
        "'Default style written by fpn-geo', 'fpn-geo')",
        (table, STYLE_QML),
    )
