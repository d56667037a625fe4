"""Optimizer state in safetensors + JSON, so resuming never unpickles anything."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fpn_geo.errors import CheckpointError


def state_paths(checkpoint: str | Path) -> tuple[Path, Path]:
    """NAME.safetensors -> (NAME.state.safetensors, NAME.state.json)."""
    p = Path(checkpoint)
    return p.with_name(p.stem + ".state.safetensors"), p.with_name(p.stem + ".state.json")


def save_train_state(optimizer: torch.optim.Optimizer, progress: dict[str, Any], checkpoint: str | Path) -> None:
    """Write the optimizer's tensors and the run's progress (epoch, step, best score...) beside a checkpoint."""
    sd = optimizer.state_dict()
    tensors = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    tpath, jpath = state_paths(checkpoint)
    tmp_t, tmp_j = tpath.with_name(tpath.name + ".tmp"), jpath.with_name(jpath.name + ".tmp")
    save_file(tensors, str(tmp_t))
    tmp_j.write_text(
        json.dumps({"param_groups": sd["param_groups"], "scalars": scalars, "progress": progress}, indent=1)
    )
    os.replace(tmp_t, tpath)
    os.replace(tmp_j, jpath)


def load_train_state(optimizer: torch.optim.Optimizer, checkpoint: str | Path) -> dict[str, Any]:
    """Restore the optimizer saved beside ``checkpoint``; returns the progress record."""
    tpath, jpath = state_paths(checkpoint)
    if not tpath.is_file() or not jpath.is_file():
        raise CheckpointError(
            f"cannot resume from {checkpoint}: {tpath.name} and {jpath.name} must sit beside it; "
            "resume from a run's last.safetensors, or use init: to start from its weights only"
        )
    record = json.loads(jpath.read_text())
    tensors = load_file(str(tpath))
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, extra in record["scalars"].items():
        state.setdefault(int(idx), {}).update(extra)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": record["param_groups"]})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"optimizer state beside {checkpoint} does not fit this model: {e}") from e
    return record["progress"]
