"""Checkpoints: weights in safetensors, a JSON metadata record beside them. Nothing is ever unpickled."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fpn_geo.errors import CheckpointError
from fpn_geo.hashing import sha256_file
from fpn_geo.model.segmenter import CLASSES_3, BuildingSegmenter

FORMAT = "fpn-geo-checkpoint/1"


@dataclass(frozen=True)
class ModelMeta:
    """What a scene must match, and how to feed it: architecture, bands, statistics, classes, GSD."""

    depth: int = 50
    bands: tuple[int, ...] = (1, 2, 3)  # 1-based band indexes of the source raster, in model order
    mean: tuple[float, ...] = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # in the source's digital numbers
    std: tuple[float, ...] = (0.229 * 255, 0.224 * 255, 0.225 * 255)
    classes: tuple[str, ...] = CLASSES_3
    gsd_m: float | None = None  # ground sample distance trained at; None: use the scene's own
    fpn_channels: int = 256
    head_channels: int = 128
    p6: bool = False
    weights_sha256: str = ""
    extra: dict = field(default_factory=dict)  # training record: data, epochs, metrics...

    def __post_init__(self) -> None:
        if not (len(self.bands) == len(self.mean) == len(self.std)):
            raise CheckpointError(
                f"metadata lists {len(self.bands)} bands but {len(self.mean)} means and {len(self.std)} stds"
            )

    @property
    def architecture(self) -> str:
        return f"resnet{self.depth}-fpn{self.fpn_channels}-semantic{self.head_channels}{'-p6' if self.p6 else ''}"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {"format": FORMAT, "architecture": self.architecture, **d}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelMeta":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names - {"format", "architecture"}
        if unknown:
            raise CheckpointError(f"unknown metadata keys {sorted(unknown)}; expected some of {sorted(names)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        try:
            return cls(**kw)
        except TypeError as e:
            raise CheckpointError(f"bad checkpoint metadata: {e}") from e


def build_model(meta: ModelMeta) -> BuildingSegmenter:
    return BuildingSegmenter(
        depth=meta.depth,
        in_channels=len(meta.bands),
        num_classes=len(meta.classes),
        fpn_channels=meta.fpn_channels,
        head_channels=meta.head_channels,
        p6=meta.p6,
    )


def meta_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def save_checkpoint(model: torch.nn.Module, meta: ModelMeta, path: str | Path) -> ModelMeta:
    """Write weights + metadata atomically; returns the metadata with the weights' sha256 filled in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"format": FORMAT})
    meta = dataclasses.replace(meta, weights_sha256=sha256_file(tmp))
    tmp_meta = tmp.with_suffix(".json.tmp")
    tmp_meta.write_text(json.dumps(meta.to_dict(), indent=2))
    os.replace(tmp, path)
    os.replace(tmp_meta, meta_path(path))
    return meta


def read_meta(path: str | Path) -> ModelMeta:
    mp = meta_path(path)
    if not mp.is_file():
        raise CheckpointError(f"checkpoint metadata {mp} is missing; a checkpoint is NAME.safetensors + NAME.json")
    try:
        return ModelMeta.from_dict(json.loads(mp.read_text()))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint metadata {mp} is not valid JSON: {e}") from e


def read_verified_meta(path: str | Path) -> ModelMeta:
    """The metadata, once the weights file is proven to be the one it describes; no model is built."""
    meta = read_meta(path)
    digest = sha256_file(path)
    if meta.weights_sha256 and digest != meta.weights_sha256:
        raise CheckpointError(
            f"checkpoint {path} has sha256 {digest[:12]}… but its metadata says {meta.weights_sha256[:12]}…; "
            "the weights and the metadata do not belong together"
        )
    return dataclasses.replace(meta, weights_sha256=digest)


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
