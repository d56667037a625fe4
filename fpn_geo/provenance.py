"""The provenance record: enough to say exactly which inputs, model, code and settings made an output."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import uuid
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from fpn_geo import __version__
from fpn_geo.georef import is_local
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
