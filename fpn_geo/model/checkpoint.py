"""Checkpoints: weights in safetensors, a JSON metadata record beside them. Nothing is ever unpickled."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fpn_geo.errors import CheckpointError
from fpn_geo.hashing import sha256_file
from fpn_geo.model.meta import FORMAT, ModelMeta, meta_path, read_verified_meta
from fpn_geo.model.segmenter import BuildingSegmenter
from fpn_geo.outputs import atomic_output, write_json_atomic

__all__ = ["build_model", "load_checkpoint", "save_checkpoint"]


def build_model(meta: ModelMeta) -> BuildingSegmenter:
    """A randomly initialised segmenter of the architecture ``meta`` describes."""
    return BuildingSegmenter(
        depth=meta.depth,
        in_channels=len(meta.bands),
        num_classes=len(meta.classes),
        fpn_channels=meta.fpn_channels,
        head_channels=meta.head_channels,
    )


def save_checkpoint(model: torch.nn.Module, meta: ModelMeta, path: str | Path, half: bool = False) -> ModelMeta:
    """Write weights + metadata, each atomically (weights first, so a reader never sees new metadata with old
    weights pass the sha256 check); returns the metadata with the weights' sha256 filled in.

    ``half`` stores the weights as fp16 (half the bytes, for checkpoints that travel; ``load_checkpoint`` copies
    them into fp32 parameters); BatchNorm statistics stay fp32."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() and "running_" not in k else v for k, v in state.items()}
    _check_finite(state, path)
    with atomic_output(path) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
        meta = dataclasses.replace(meta, weights_sha256=sha256_file(tmp))
    write_json_atomic(meta_path(path), meta.to_dict())
    return meta


def _check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(
                f"checkpoint {path}: weight {name} holds {bad} NaN or infinite value(s); the model is broken, "
                "retrain or use an earlier checkpoint"
            )


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[BuildingSegmenter, ModelMeta]:
    """Build the model the metadata describes and load its weights strictly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    meta = read_verified_meta(path)
    try:
        state = load_file(str(path), device=map_location)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {e}") from e
    _check_finite(state, path)
    model = build_model(meta)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1:3]
        raise CheckpointError(
            f"checkpoint {path} does not match architecture {meta.architecture} with {len(meta.bands)} bands: "
            + " ".join(s.strip() for s in first)
        ) from e
    model.eval()
    return model, meta
