"""Turning the `scenes` parameter (a folder, a glob, a manifest or a list) into scene paths and output paths."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from fpn_geo.errors import InputError
from fpn_geo.georef import is_local

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
MANIFEST_SUFFIXES = (".txt", ".lst", ".csv", ".manifest")


def list_scenes(scenes: str | list[str]) -> list[str]:
    """Scene paths, sorted and unique, from:

    - a list of paths;
    - a manifest file (.txt/.lst/.csv/.manifest): one path per line (first CSV column), `#` comments;
      relative paths are relative to the manifest; GDAL paths (/vsis3/..., s3://...) are kept as they are;
    - a folder: its rasters (*.tif, *.tiff, *.vrt, *.jp2, *.img), not recursive;
    - a glob pattern (`data/**/*.tif`).
    """
    if isinstance(scenes, (list, tuple)):
        found = [str(s) for s in scenes]
    elif not is_local(scenes):
        found = [scenes]
    elif os.path.isdir(scenes):
        found = [
            str(p) for p in Path(scenes).iterdir() if p.suffix.lower() in RASTER_SUFFIXES and not p.name.startswith(".")
        ]
    elif os.path.isfile(scenes) and Path(scenes).suffix.lower() in MANIFEST_SUFFIXES:
        base = Path(scenes).parent
        found = []
        for line in Path(scenes).read_text().splitlines():
            entry = line.split("#", 1)[0].split(",", 1)[0].strip()
            if entry:
                found.append(entry if not is_local(entry) or os.path.isabs(entry) else str(base / entry))
    elif glob.has_magic(scenes):
        found = [p for p in glob.glob(scenes, recursive=True) if os.path.isfile(p)]
    elif os.path.isfile(scenes):
        found = [scenes]
    else:
        raise InputError(
            f"scenes {scenes!r} is not a folder, a manifest ({', '.join(MANIFEST_SUFFIXES)}), a glob or a file"
        )
    return sorted(dict.fromkeys(found))


PROBABILITY_SUFFIX = ".probability.tif"  # what fpn-geo writes beside each GeoPackage


def is_own_output(path: str) -> bool:
    """A probability raster fpn-geo wrote (NAME.probability.tif whose bands say so), not a scene to segment."""
    if not path.lower().endswith(PROBABILITY_SUFFIX):
        return False
    if not is_local(path):
        return True
    try:
        import rasterio

        with rasterio.open(path) as src:
            return (
                src.tags().get("scale") == "probability x 255"
                or (src.descriptions or (None,))[0] == "building_probability"
            )
    except Exception:  # unreadable: not ours to judge; segmenting it will say what is wrong
        return False


def drop_own_outputs(paths: list[str]) -> tuple[list[str], list[str]]:
    """(scenes, fpn-geo outputs found among them): an out_dir equal to the scenes folder must not make the next
    run segment its own probability rasters."""
    ours = [p for p in paths if is_own_output(p)]
    return [p for p in paths if p not in ours], ours


def scene_name(path: str) -> str:
    """A file-system and Prefect-key friendly name: the file's stem."""
    stem = Path(path.rstrip("/")).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) or "scene"


def output_paths(paths: list[str], out_dir: str | Path, names: dict[str, str] | None = None) -> dict[str, Path]:
    """Map each scene path to out_dir/<name>.gpkg (name: from `names`, e.g. a STAC item's id, else the file's
    stem); two scenes with the same name would overwrite each other, so refuse."""
    outs: dict[str, Path] = {}
    seen: dict[str, str] = {}
    for p in paths:
        name = names[p] if names else scene_name(p)
        if name in seen:
            raise InputError(
                f"scenes {seen[name]} and {p} would both write {name}.gpkg; rename one or run them separately"
            )
        seen[name] = p
        outs[p] = Path(out_dir) / f"{name}.gpkg"
    return outs


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")[:100]
