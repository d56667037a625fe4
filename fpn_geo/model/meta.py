"""A checkpoint's metadata (NAME.json beside NAME.safetensors): what a scene must match and how to feed it.

Kept apart from the weights, and free of torch, so the side that plans and writes (a flow) can read and
verify a checkpoint without importing torch (about 4 s here) or building the model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

from fpn_geo.errors import CheckpointError
from fpn_geo.hashing import sha256_file

FORMAT = "fpn-geo-checkpoint/1"
CLASSES_2 = ("background", "building")
CLASSES_3 = ("background", "building", "contact")
CONTACT_NAMES = ("contact", "separator")  # the third class: where two buildings touch
DEPTHS = (18, 34, 50, 101)
MAX_BANDS = 64
MAX_CHANNELS = 4096
MAX_META_BYTES = 16 * 1024 * 1024
DEFAULT_INPUT_RANGE = (0.0, 255.0)  # what checkpoints without `input_range` were trained on: 8-bit imagery
MAX_GSD_M = 10_000.0
# Post-processing keys of SegmentConfig that a checkpoint may set as its own defaults (`postprocess`), because
# they belong to how that model was trained (its calibration, whether it learnt to separate): key -> (what it
# must be, the check). Checked here without pydantic, so the torch-only trainer can read any checkpoint; the
# ranges are SegmentConfig's, which checks the values again when it takes them (config.with_model_defaults).
_POSTPROCESS_CHECKS = {
    "threshold": ("a number > 0 and < 1, e.g. 0.5", lambda v: _is_number(v) and 0 < v < 1),
    "separate_touching": ("true or false", lambda v: isinstance(v, bool)),
    "min_area_m2": ("square metres from 0 to 1e9, e.g. 4", lambda v: _is_number(v) and 0 <= v <= 1e9),
    "simplify_m": ("metres from 0 to 1000, e.g. 0.3", lambda v: _is_number(v) and 0 <= v <= 1000),
    "regularize": ("a number from 0 to 1 (0 = off)", lambda v: _is_number(v) and 0 <= v <= 1),
}
POSTPROCESS_KEYS = tuple(_POSTPROCESS_CHECKS)


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
    input_range: tuple[float, float] = DEFAULT_INPUT_RANGE  # pixel values the model was trained on (digital numbers)
    # Scene GSDs (metres, both ends included) this model serves when the product picks a bundled model by GSD
    # (fpn_geo.model.registry); None: every GSD, as checkpoints made before ranges existed.
    gsd_range_m: tuple[float, float] | None = None
    # Post-processing defaults of this model (keys of POSTPROCESS_KEYS); a config file, --set or a flag wins.
    postprocess: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_meta(self)

    @property
    def contact_index(self) -> int | None:
        """Index of the touching-buildings class ("contact" or "separator") among the classes, or None."""
        return next((i for i, c in enumerate(self.classes) if c in CONTACT_NAMES), None)

    @property
    def channels(self) -> int:
        """Probability channels the pipeline gets: 1 (footprint) or 2 (footprint and contact)."""
        return 1 if self.contact_index is None else 2

    @property
    def serves_m(self) -> tuple[float, float]:
        """The scene GSDs this model serves: `gsd_range_m`, or every GSD when the checkpoint does not say."""
        if self.gsd_range_m is None:
            return 0.0, math.inf
        lo, hi = self.gsd_range_m
        return float(lo), float(hi)

    @property
    def architecture(self) -> str:
        return f"resnet{self.depth}-fpn{self.fpn_channels}-semantic{self.head_channels}"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {"format": FORMAT, "architecture": self.architecture, **d}

    @classmethod
    def from_dict(cls, d: dict) -> ModelMeta:
        if not isinstance(d, dict):
            raise CheckpointError(f"checkpoint metadata must be a JSON object, got {type(d).__name__}")
        if "format" in d and d["format"] != FORMAT:
            raise CheckpointError(
                f"checkpoint metadata format is {str(d['format'])[:40]!r}; this fpn-geo reads {FORMAT!r}"
            )
        if "p6" in d and d["p6"] is not False:  # an option that was removed: P6 was computed and never read by the head
            raise CheckpointError(f"checkpoint metadata has p6 = {str(d['p6'])[:20]!r}; P6 is no longer built: "
                                  "retrain without it, or remove the key (false is accepted)")
        d = {k: v for k, v in d.items() if k != "p6"}  # "p6": false, in older checkpoints, changes nothing
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names - {"format", "architecture"}
        if unknown:
            raise CheckpointError(f"unknown metadata keys {sorted(unknown)}; expected some of {sorted(names)}")
        kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        try:
            return cls(**kw)
        except (TypeError, ValueError, OverflowError) as e:
            raise CheckpointError(f"bad checkpoint metadata: {e}") from e


def _bad(key: str, value, expected: str) -> CheckpointError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return CheckpointError(f"checkpoint metadata: {key} is {shown}; expected {expected}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    if not isinstance(v, Real) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:  # an integer of hundreds of digits
        return False


def _numbers(key: str, values, n: int | None = None) -> tuple[float, ...]:
    if not isinstance(values, (tuple, list)) or not values or not all(_is_number(v) for v in values):
        raise _bad(key, values, "a non-empty list of finite numbers")
    if n is not None and len(values) != n:
        raise _bad(key, values, f"{n} values, one per band")
    return tuple(float(v) for v in values)


def validate_meta(m: ModelMeta) -> None:
    """Every field of a checkpoint's metadata has a type and a range the model can run with; one-line errors."""
    if not _is_int(m.depth) or m.depth not in DEPTHS:
        raise _bad("depth", m.depth, f"a ResNet depth, one of {list(DEPTHS)}")
    if not isinstance(m.bands, (tuple, list)) or not 1 <= len(m.bands) <= MAX_BANDS:
        raise _bad("bands", m.bands, f"a list of 1 to {MAX_BANDS} band numbers")
    if not all(_is_int(b) and 1 <= b <= 65535 for b in m.bands) or len(set(m.bands)) != len(m.bands):
        raise _bad("bands", m.bands, "distinct 1-based band numbers, e.g. [1, 2, 3]")
    n = len(m.bands)
    if (
        not isinstance(m.input_range, (tuple, list))
        or len(m.input_range) != 2
        or not all(_is_number(v) for v in m.input_range)
    ):
        raise _bad("input_range", m.input_range, "[low, high], two finite numbers, e.g. [0, 255]")
    lo, hi = (float(v) for v in m.input_range)
    if not lo < hi or max(abs(lo), abs(hi)) > 1e12:
        raise _bad("input_range", m.input_range, "[low, high] with low < high, e.g. [0, 255]")
    span = hi - lo
    mean = _numbers("mean", m.mean, n)
    std = _numbers("std", m.std, n)
    if not all(lo - span <= v <= hi + span for v in mean):
        raise _bad("mean", m.mean, f"per-band means inside the input range [{lo:g}, {hi:g}]")
    if not all(0 < v <= 2 * span for v in std):
        raise _bad("std", m.std, f"per-band standard deviations > 0 and at most the input range's width ({span:g})")
    classes = tuple(m.classes) if isinstance(m.classes, (tuple, list)) else None
    allowed = [CLASSES_2, *(CLASSES_2 + (c,) for c in CONTACT_NAMES)]
    if classes not in allowed:
        raise _bad("classes", m.classes, " or ".join(str(list(c)) for c in allowed))
    if m.gsd_m is not None and not (_is_number(m.gsd_m) and 0 < m.gsd_m <= 10_000):
        raise _bad("gsd_m", m.gsd_m, "the ground sample distance in metres, > 0 (e.g. 0.3), or null to use the scene's")
    for key in ("fpn_channels", "head_channels"):
        v = getattr(m, key)
        if not _is_int(v) or not 32 <= v <= MAX_CHANNELS or v % 32:
            raise _bad(key, v, f"a multiple of 32 from 32 to {MAX_CHANNELS}")
    if not isinstance(m.weights_sha256, str) or not re.fullmatch(r"(|[0-9a-f]{64})", m.weights_sha256):
        raise _bad("weights_sha256", m.weights_sha256, "a sha256 of 64 lowercase hex digits")
    if not isinstance(m.extra, dict):
        raise _bad("extra", m.extra, "a JSON object")
    _check_gsd_range(m.gsd_range_m)
    _check_postprocess(m.postprocess)


def _check_gsd_range(r) -> None:
    if r is None:
        return
    if not isinstance(r, (tuple, list)) or len(r) != 2 or not all(_is_number(v) for v in r):
        raise _bad("gsd_range_m", r, "[low, high], the scene GSDs in metres this model serves, e.g. [0.25, 0.6]")
    lo, hi = (float(v) for v in r)
    if not 0 <= lo < hi <= MAX_GSD_M:
        raise _bad("gsd_range_m", r, f"[low, high] with 0 <= low < high <= {MAX_GSD_M:g}, e.g. [0.25, 0.6]")


def _check_postprocess(d) -> None:
    if not isinstance(d, dict):
        raise _bad("postprocess", d, f"a JSON object of post-processing defaults ({', '.join(POSTPROCESS_KEYS)})")
    unknown = sorted(str(k) for k in d if k not in _POSTPROCESS_CHECKS)
    if unknown:
        raise CheckpointError(
            f"checkpoint metadata: postprocess has unknown key(s) {unknown[:5]}; a model may set "
            f"{', '.join(POSTPROCESS_KEYS)}"
        )
    for key, value in d.items():
        expected, ok = _POSTPROCESS_CHECKS[key]
        if not ok(value):
            raise _bad(f"postprocess.{key}", value, expected)


def meta_path(weights: str | Path) -> Path:
    """The metadata file of a weights file: NAME.json beside NAME.safetensors."""
    return Path(weights).with_suffix(".json")


def read_meta(path: str | Path) -> ModelMeta:
    """A checkpoint's metadata, read and checked; CheckpointError if it is missing or malformed."""
    mp = meta_path(path)
    if not mp.is_file():
        raise CheckpointError(f"checkpoint metadata {mp} is missing; a checkpoint is NAME.safetensors + NAME.json")
    size = mp.stat().st_size
    if size > MAX_META_BYTES:
        raise CheckpointError(
            f"checkpoint metadata {mp} is {size} bytes; metadata over {MAX_META_BYTES} bytes is refused"
        )
    try:
        data = json.loads(mp.read_bytes())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint metadata {mp} is not valid JSON: {e}") from e
    except (ValueError, RecursionError, UnicodeDecodeError) as e:  # 5000-digit integers, nesting too deep, not UTF-8
        raise CheckpointError(f"checkpoint metadata {mp} cannot be read: {str(e).splitlines()[0][:120]}") from e
    try:
        return ModelMeta.from_dict(data)
    except CheckpointError as e:
        raise CheckpointError(f"{mp}: {e}") from e


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
