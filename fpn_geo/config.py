"""Run configuration: the documented pydantic fields below are the one source of defaults.

A YAML file (`--config`, e.g. configs/segment.yaml) holds overrides only, and flags override it. Paths in a
YAML file resolve against that file's folder. Parsing is bounded: a config over `MAX_YAML_BYTES`, with more
than `MAX_YAML_ALIASES` aliases (an "anchor bomb") or nested deeper than `MAX_YAML_DEPTH` is refused on one
line, as are integers too long to convert.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fpn_geo.errors import ConfigError
from fpn_geo.radiometry import RadiometryConfig

MAX_YAML_BYTES = 1024 * 1024
MAX_YAML_ALIASES = 100
MAX_YAML_DEPTH = 32
MAX_YAML_NODES = 100_000  # values once aliases are expanded
MAX_WINDOW = 4096  # model pixels; a 4096² window already needs several GB of activations
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,2})?)$")
MODEL_DEFAULT = "; a checkpoint may carry its own default (its postprocess), used unless this is set"


class SegmentConfig(BaseModel):
    """Every knob of a `segment` run; all of it is recorded in the GeoPackage's provenance."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    window: int = Field(512, gt=0, le=MAX_WINDOW, description="window side in model pixels; a multiple of 32")
    overlap: int = Field(64, ge=0, description="overlap between windows in model pixels")
    batch: int = Field(1, gt=0, le=4096, description="windows per model call: 1 on CPU, 32-64 on a GPU")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    compile: bool = Field(False, description="torch.compile the model (CUDA)")
    readers: int = Field(0, ge=0, le=64, description="reader threads; 0 = auto: 1 on CPU, up to 8 on CUDA")
    threshold: float = Field(0.5, gt=0, lt=1, description="building probability threshold" + MODEL_DEFAULT)
    min_area_m2: float = Field(4.0, ge=0, le=1e9, description="smallest building kept, square metres" + MODEL_DEFAULT)
    simplify_m: float = Field(0.3, ge=0, le=1000, description="outline simplification tolerance in metres (0.3: a "
        "pixel of a 0.30 m model grid, which takes out the staircase of traced pixel edges); each block's outlines "
        "are simplified together, so neighbours never overlap, and block borders do not move")
    regularize: float = Field(0.0, ge=0, le=1, description="right-angled outlines: a building whose IoU with its "
        "oriented minimum rectangle is at least this becomes that rectangle (e.g. 0.85); 0 = off")
    separate_touching: bool = Field(
        True, description="split touching buildings with the contact class" + MODEL_DEFAULT
    )
    labelling: Literal["auto", "cpu", "device"] = Field(
        "auto", description="where buildings are labelled and split: cpu = scipy/skimage watershed; device = torch on "
        "the model's device (a level-by-level flood, within a pixel of the watershed); auto = device on CUDA, else cpu"
    )
    resampling: Literal["auto", "cpu", "device"] = Field(
        "auto", description="where windows are resampled to the model's GSD: cpu = GDAL's bilinear as they are read; "
        "device = the scene's own pixels uploaded as uint8 and resampled there the same way (within one uint8 step; "
        "only uint8 scenes with no nodata, mask, alpha or usable overview, else cpu); auto = device on CUDA, else cpu"
    )
    block_windows: int = Field(
        4, gt=0, description="block side in windows: the unit that is blended and vectorized at once; bounds memory"
    )
    post_threads: int = Field(
        0, ge=0, description="threads post-processing blocks beside the model; 0 = auto: 1 on CPU, most cores on CUDA"
    )
    post_workers: Literal["threads", "processes"] = Field(
        "threads", description="what finishes blocks beside the model: threads, or processes (spawned, dying with "
        "their parent) for GPU hosts with many cores, where the Python work between numpy and shapely calls serialises "
        "threads; a daemonic Dask worker uses threads"
    )
    match_gsd: bool = Field(True, description="resample windows to the checkpoint's GSD")
    probability: Literal["cog", "none"] = Field("cog", description="also write the probability COG")
    probability_grid: Literal["model", "native"] = Field(
        "model", description="the COG's grid: the model's GSD, or the scene's own"
    )
    gdal_cache_mb: int = Field(128, gt=0, le=1_000_000, description="GDAL block cache; bounds raster I/O memory")
    radiometry: RadiometryConfig = Field(
        default_factory=RadiometryConfig,
        description="how the scene's pixel values map to the model's input range: "
        "{rule: auto|identity|linear|percentile, scale, offset, percentiles}; see fpn_geo/radiometry.py",
    )
    scratch_dir: str | None = Field(
        None, description="folder for the blocks' compressed probability tiles (well under 1 byte a model-grid pixel); "
        "None: the system temp folder. Relative paths in a YAML file resolve against the file's folder",
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        if not DEVICE_RE.match(v):
            raise ValueError(f"unknown device {v!r}; use auto, cpu, cuda or cuda:N")
        return v

    @model_validator(mode="after")
    def _check_window(self) -> SegmentConfig:
        if self.window % 32:
            raise ValueError(
                f"window {self.window} must be a multiple of 32, e.g. {max(32, round(self.window / 32) * 32)}"
            )
        if self.overlap >= self.window // 2:
            raise ValueError(f"overlap {self.overlap} must be less than half the window ({self.window // 2})")
        return self


M = TypeVar("M", bound=BaseModel)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchor bombs and deep nesting before anything is built."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise ConfigError(
                    f"more than {MAX_YAML_ALIASES} aliases (*name); a config needs none, this looks like an anchor bomb"
                )
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise ConfigError(f"nested deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):  # noqa: ANN201
        node = super().compose_document()
        if node is not None and _expanded_size(node, {}) > MAX_YAML_NODES:
            raise ConfigError(
                f"expands to more than {MAX_YAML_NODES} values through its aliases; this looks like an anchor bomb"
            )
        return node


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Values in `node` with every alias expanded, counted without expanding (shared nodes counted once each)."""
    if id(node) in memo:
        return memo[id(node)]
    if isinstance(node, yaml.SequenceNode):
        n = 1 + sum(_expanded_size(c, memo) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        n = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        n = 1
    memo[id(node)] = min(n, MAX_YAML_NODES + 1)
    return memo[id(node)]


def parse_yaml(text: str | bytes, source: str) -> Any:
    """yaml.safe_load, bounded in size, aliases, depth and integer length; every failure a one-line ConfigError."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source} is {len(text)} bytes; a config over {MAX_YAML_BYTES} bytes is refused")
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot read {source}: {' '.join(str(e).split())}") from e
    except (ValueError, OverflowError, RecursionError) as e:  # e.g. a 5000-digit integer
        raise ConfigError(f"cannot read {source}: {str(e).splitlines()[0][:160]}") from e


def read_yaml_mapping(path: Path, what: str = "config") -> dict[str, Any]:
    """A YAML file's top-level mapping, or ConfigError for a file that is unreadable, too big or not a mapping."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(f"{what} {path} is {size} bytes; a config over {MAX_YAML_BYTES} bytes is refused")
        text = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from e
    data = parse_yaml(text, f"{what} {path}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of keys to values, got {type(data).__name__}")
    return data


def _shown(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return ""
    text = repr(value)
    return f" (got {text if len(text) <= 60 else text[:57] + '...'})"


def build_config(
    model: type[M], data: dict[str, Any], source: str, known_keys: Callable[[str], Iterable[str]] | None = None,
    sources: dict[str, str] | None = None,
) -> M:
    """Validate `data` as `model`; every problem is named with its key, what came and what was expected.

    known_keys(key) lists the keys allowed where an unknown `key` was found (default: the model's own).
    sources maps a top-level key to where its value came from (a flag such as "--window"); the rest came from
    `source` (a file, or "defaults").
    """
    sources = sources or {}
    try:
        return model(**data)
    except ValidationError as e:
        parts: list[str] = []
        unknown: list[str] = []
        for err in e.errors():
            loc = [str(x) for x in err["loc"]]
            key = ".".join(loc) or "config"
            msg = err["msg"].removeprefix("Value error, ")
            where = sources.get(loc[0]) if loc else None
            if err["type"] == "extra_forbidden":
                if not unknown:
                    parts.append("")  # filled below, in the place of the first unknown key
                unknown.append(key)
            elif where:  # a flag's value: the message names the flag, not the file
                parts.append(f"{where}: {msg}" if len(loc) == 1 else f"{where}: {key}: {msg}")
            elif loc:
                parts.append(f"{source}: {key}: {msg}{_shown(err.get('input'))}")
            else:  # the values together (window and overlap): the file alone passed, so name the flags given
                given = [v for k, v in sources.items() if k in data]
                parts.append(f"{', '.join(given or [source])}: {msg}")
        if unknown:
            known = known_keys(unknown[0]) if known_keys else model.model_fields
            words = "unknown key" + ("s " if len(unknown) > 1 else " ") + ", ".join(repr(k) for k in unknown)
            parts[parts.index("")] = f"{source}: {words} (known: {', '.join(known)})"
        raise ConfigError("; ".join(parts)) from e


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths in a config file are relative to the file's folder, not to where the command runs."""
    out = dict(data)
    if isinstance(out.get("scratch_dir"), str) and out["scratch_dir"] and not Path(out["scratch_dir"]).is_absolute():
        out["scratch_dir"] = str((base / out["scratch_dir"]).resolve())
    return out


def parse_overrides(pairs: Iterable[str], flag: str = "--set") -> dict[str, Any]:
    """`KEY=VALUE` strings (VALUE in YAML: `batch=8`, `radiometry={rule: percentile}`) as a mapping of overrides;
    a pair without `=`, an empty key or a value that is not YAML is a one-line ConfigError naming the pair."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"{flag} {pair!r}: expected KEY=VALUE, e.g. {flag} window=512")
        out[key.strip()] = parse_yaml(value, f"{flag} {pair!r}")
    return out


def load_config(path: str | Path | None = None, flags: dict[str, str] | None = None, **overrides: Any) -> SegmentConfig:
    """The documented defaults, then the YAML file's overrides (if any), then `overrides` (None values ignored).

    flags maps an override key to the flag that gave it (e.g. {"window": "--window"}), so an error names the flag.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path:
        p = Path(path)
        data, source = _resolve_paths(read_yaml_mapping(p), p.resolve().parent), str(p)
        build_config(SegmentConfig, data, source)  # the file alone first: its errors name the file
    given = {k: v for k, v in overrides.items() if v is not None}
    data.update(given)
    names = {k: f"{(flags or {}).get(k, k)} {v}" if (flags or {}).get(k) else k for k, v in given.items()}
    return build_config(SegmentConfig, data, source, sources={k: names[k] for k in given if (flags or {}).get(k)})


def with_model_defaults(cfg: SegmentConfig, defaults: dict[str, Any]) -> SegmentConfig:
    """`cfg` with a checkpoint's post-processing defaults (`ModelMeta.postprocess`) in the keys nobody set.

    Precedence, highest first: a flag, `--set` or the config file (whatever `load_config` or the caller passed:
    `cfg.model_fields_set`), then the checkpoint's defaults, then the documented defaults above. A threshold or
    separation belongs to how a model was trained, so it travels with the model unless the user says otherwise.
    """
    taken = {k: v for k, v in defaults.items() if k not in cfg.model_fields_set}
    if not taken:
        return cfg
    try:
        SegmentConfig.model_validate(taken)  # the checkpoint checked its ranges; these are the config's own
    except ValidationError as e:
        raise ConfigError(f"the checkpoint's post-processing defaults {taken}: {e.errors()[0]['msg']}") from e
    return cfg.model_copy(update=taken)


# Keys that change how fast a run goes or where it works, never what it writes.
OUTPUT_NEUTRAL_KEYS = frozenset(
    {"device", "compile", "readers", "batch", "gdal_cache_mb", "post_threads", "post_workers", "scratch_dir"}
)


def output_parameters(cfg: SegmentConfig) -> dict[str, Any]:
    """The parameters that change a run's output: what an up-to-date check must compare (JSON-ready)."""
    return {k: v for k, v in cfg.model_dump(mode="json").items() if k not in OUTPUT_NEUTRAL_KEYS}
