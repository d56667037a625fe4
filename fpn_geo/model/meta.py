"""A checkpoint's metadata (NAME.json beside NAME.safetensors): what a scene must match and how to feed it.

Kept apart from the weights, and free of torch, so the side that plans and writes (a flow) can read and
verify a checkpoint without importing torch (about 4 s here) or building the model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from fpn_geo.errors import CheckpointError
from fpn_geo.hashing import sha256_file

FORMAT = "fpn-geo-checkpoint/1"
CLASSES_2 = ("background", "building")
CLASSES_3 = ("background", "building", "contact")
CONTACT_NAMES = ("contact", "separator")  # the third class: where two buildings touch


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
    weights_sha256: str = ""
    extra: dict = field(default_factory=dict)  # training record: data, epochs, metrics...

    def __post_init__(self) -> None:
        if not (len(self.bands) == len(self.mean) == len(self.std)):
            raise CheckpointError(
                f"metadata lists {len(self.bands)} bands but {len(self.mean)} means and {len(self.std)} stds"
            )

    @property
    def contact_index(self) -> int | None:
        """Index of the touching-buildings class ("contact" or "separator") among the classes, or None."""
        return next((i for i, c in enumerate(self.classes) if c in CONTACT_NAMES), None)

    @property
    def channels(self) -> int:
        """Probability channels the pipeline gets: 1 (footprint) or 2 (footprint and contact)."""
        return 1 if self.contact_index is None else 2

    @property
    def architecture(self) -> str:
        return f"resnet{self.depth}-fpn{self.fpn_channels}-semantic{self.head_channels}"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {"format": FORMAT, "architecture": self.architecture, **d}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelMeta":
        if d.get("p6"):  # an option that was removed: P6 was computed and never read by the head
            raise CheckpointError("checkpoint metadata asks for p6: true; P6 is no longer built: retrain without p6")
        d = {k: v for k, v in d.items() if k != "p6"}  # "p6": false, in older checkpoints, changes nothing
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names - {"format", "architecture"}
        if unknown:
            raise CheckpointError(f"unknown metadata keys {sorted(unknown)}; expected some of {sorted(names)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        try:
            return cls(**kw)
        except TypeError as e:
            raise CheckpointError(f"bad checkpoint metadata: {e}") from e


def meta_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


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
