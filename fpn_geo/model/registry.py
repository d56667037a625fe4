"""Which checkpoint serves a scene when none is named: the one GSD rule that `fpn-geo segment` and the flows share.

The bundled checkpoints are every NAME.safetensors with its NAME.json in the models folder: `FPN_GEO_MODELS`
if set, else `models/` of this checkout. Each declares in its metadata the scene GSDs it serves
(`gsd_range_m: [low, high]`, metres, both ends included); one without a range serves every GSD. A scene's
GSD is the size of its centre pixel in metres, measured in the local UTM zone (`SceneInfo.gsd_m`), so a
scene in degrees (EPSG:4326) is measured like any other. The rule, `pick`:

1. the checkpoints whose range covers the scene's GSD;
2. of several: the narrowest range (a specialist before a generalist or a checkpoint without a range), then
   the model GSD nearest the scene's (by ratio), then the name;
3. none covers it: the nearest range (by ratio to its nearer end), with a warning; the output records it.

An explicit model (`--model`, the flows' `checkpoint`) always wins and is recorded as "explicit".
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fpn_geo import REPO_ROOT
from fpn_geo.errors import CheckpointError
from fpn_geo.model.meta import meta_path, read_meta

MODELS_ENV = "FPN_GEO_MODELS"
EXPLICIT = "explicit"

log = logging.getLogger("fpn_geo")


@dataclass(frozen=True)
class Candidate:
    """A bundled checkpoint, as the rule sees it: its name, the GSD it runs at and the scene GSDs it serves."""

    path: str
    name: str
    gsd_m: float | None
    serves_m: tuple[float, float]  # (low, high); (0, inf) for a checkpoint that does not say


@dataclass(frozen=True)
class ModelChoice:
    """The checkpoint a run uses and why: `selection` is "explicit" or "auto (...)", as provenance records it."""

    path: str
    name: str
    selection: str
    covered: bool = True  # False: no range covered the scene's GSD, the nearest was taken


def models_dir() -> Path:
    """Where the bundled checkpoints are: `FPN_GEO_MODELS`, else `models/` beside the package (a checkout)."""
    env = os.environ.get(MODELS_ENV)
    return Path(env) if env else REPO_ROOT / "models"


def bundled_models(directory: str | Path | None = None) -> list[Candidate]:
    """Every checkpoint (NAME.safetensors with NAME.json) in `directory`, by name; weights without metadata are
    not checkpoints and are passed over. A checkpoint whose metadata is broken stops the choice with its line."""
    folder = Path(directory) if directory is not None else models_dir()
    found = []
    for weights in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        if not meta_path(weights).is_file():
            continue
        meta = read_meta(weights)
        found.append(Candidate(str(weights), weights.stem, meta.gsd_m, meta.serves_m))
    return found


def _range_text(r: tuple[float, float]) -> str:
    return f"[{r[0]:g}, {r[1]:g}]"


def _log_distance(gsd: float, r: tuple[float, float]) -> float:
    """How far a GSD lies outside a range, as a log ratio to its nearer end; 0 inside."""
    lo, hi = r
    if gsd < lo:
        return math.log(lo / gsd)
    return math.log(gsd / hi) if gsd > hi else 0.0


def _preference(gsd: float, c: Candidate) -> tuple[float, float, float, str]:
    lo, hi = c.serves_m
    nearest_gsd = abs(math.log(gsd / c.gsd_m)) if c.gsd_m else math.inf
    return _log_distance(gsd, c.serves_m), hi - lo, nearest_gsd, c.name


def pick(scene_gsd_m: float, candidates: Sequence[Candidate]) -> ModelChoice:
    """The candidate that serves a scene of `scene_gsd_m` metres per pixel, by the rule in this module's docstring."""
    if not candidates:
        raise CheckpointError("no bundled checkpoint to choose from")
    if not (math.isfinite(scene_gsd_m) and scene_gsd_m > 0):
        raise CheckpointError(f"the scene's GSD is {scene_gsd_m!r} m; a model can be chosen only for a GSD > 0")
    best = min(candidates, key=lambda c: _preference(scene_gsd_m, c))
    covered = _log_distance(scene_gsd_m, best.serves_m) == 0.0
    where = "in" if covered else "outside every range; nearest"
    return ModelChoice(
        best.path, best.name, f"auto (scene gsd {scene_gsd_m:.3g} m {where} {_range_text(best.serves_m)})", covered
    )


def choose_model(scene: str, model: str | Path | None = None, directory: str | Path | None = None) -> ModelChoice:
    """The checkpoint for `scene`: `model` if given, else the bundled one whose range covers the scene's GSD.

    Opens the scene (with `open_scene`'s one-line errors) only when it has to choose.
    """
    if model is not None:
        return ModelChoice(str(model), Path(model).stem, EXPLICIT)
    folder = Path(directory) if directory is not None else models_dir()
    candidates = bundled_models(folder)
    if not candidates:
        raise CheckpointError(
            f"no model given and no checkpoint (NAME.safetensors + NAME.json) in {folder}; give one "
            f"(--model CKPT.safetensors), or set {MODELS_ENV} to a folder of checkpoints"
        )
    from fpn_geo.scene import open_scene

    choice = pick(open_scene(scene).gsd_m, candidates)
    if not choice.covered:
        log.warning("no bundled model serves this scene's GSD: using %s, %s", choice.name, choice.selection)
    return choice
