"""The provenance record: enough to say exactly which inputs, model, code and settings made an output; and, read
back, whether an output is already what a run would make (`is_up_to_date`)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from fpn_geo import __version__
from fpn_geo.geopackage import read_provenance
from fpn_geo.georef import is_local
from fpn_geo.hashing import sha256_file
from fpn_geo.model.meta import ModelMeta
from fpn_geo.scene import SceneInfo


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    """A fresh random run id (32 hex digits)."""
    return uuid.uuid4().hex


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the running fpn-geo source, when it runs from a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def torch_version() -> str | None:
    """The installed torch's version, read from its package metadata: importing torch costs seconds."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def device_description(device: str) -> str:
    """The device a run used, for the record: the GPU's name, or the CPU and its core count."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"{device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def build_record(
    *,
    run_id: str,
    started: str,
    finished: str,
    scene: SceneInfo,
    scene_sha256: str | None,
    checkpoint_path: str | None,
    meta: ModelMeta | None,
    parameters: dict,
    model_selection: str | None = None,
    device: str,
    results: dict,
) -> dict:
    """The provenance record of one run: inputs and their hashes, model, parameters, device and results.

    model_selection: how the checkpoint was chosen (`fpn_geo.model.registry`): "explicit" (the default when a
    checkpoint is given), or "auto (scene gsd ... m in [low, high])"."""
    return {
        "run_id": run_id,
        "started_utc": started,
        "finished_utc": finished,
        "software": "fpn-geo",
        "version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch_version(),
        "input_path": scene.path,
        "input_size_bytes": os.path.getsize(scene.path) if is_local(scene.path) else None,
        "input_sha256": scene_sha256,
        "input_crs": scene.crs.to_string(),
        "input_transform": list(scene.transform),
        "input_width": scene.width,
        "input_height": scene.height,
        "checkpoint_path": checkpoint_path,
        "model_name": Path(checkpoint_path).stem if checkpoint_path else None,
        "model_selection": (model_selection or "explicit") if checkpoint_path else None,
        "checkpoint_sha256": meta.weights_sha256 if meta else None,
        "checkpoint_meta": meta.to_dict() if meta else None,
        "parameters": parameters,
        "host": socket.gethostname(),
        "device": device_description(device),
        **results,
    }


# --- is this scene done? ----------------------------------------------------------------------------------------


def hashable_scene(scene_path: str) -> bool:
    """A local scene's bytes are hashed; remote paths (/vsis3/, s3://...) are not."""
    return is_local(scene_path) and os.path.exists(scene_path)


def scene_sha256(scene_path: str) -> str | None:
    """sha256 of a local scene's bytes; None for remote paths."""
    return sha256_file(scene_path) if hashable_scene(scene_path) else None


def is_up_to_date(
    gpkg: str | Path, input_sha256: str | None, checkpoint_sha256: str | None, parameters: dict | None = None,
    also: Sequence[str | Path] = (),
) -> bool:
    """True when `gpkg` was made from exactly these input bytes, these weights and these output parameters
    (`fpn_geo.config.output_parameters`), and every path in `also` (e.g. its probability COG) exists.
    Remote inputs (no sha256) never are."""
    if not input_sha256 or not checkpoint_sha256 or not Path(gpkg).is_file():
        return False
    prov = read_provenance(gpkg)
    if not prov or prov.get("input_sha256") != input_sha256:
        return False
    return made_with(gpkg, checkpoint_sha256, parameters, also, prov)


def made_with(
    gpkg: str | Path, checkpoint_sha256: str | None, parameters: dict | None = None, also: Sequence[str | Path] = (),
    prov: dict | None = None,
) -> bool:
    """True when `gpkg` records these weights and output parameters and every path in `also` exists, whatever its
    input: the half of `is_up_to_date` that a remote scene, identified by its STAC item instead of a sha256, uses."""
    if not checkpoint_sha256 or any(not Path(p).is_file() for p in also):
        return False
    prov = prov if prov is not None else read_provenance(gpkg)
    if not prov or prov.get("checkpoint_sha256") != checkpoint_sha256:
        return False
    if parameters is None:
        return True
    recorded = prov.get("parameters")
    try:
        recorded = json.loads(recorded) if isinstance(recorded, str) else recorded
    except ValueError:
        return False
    if not isinstance(recorded, dict):
        return False
    return all(
        json.dumps(recorded.get(k), sort_keys=True) == json.dumps(v, sort_keys=True) for k, v in parameters.items()
    )
