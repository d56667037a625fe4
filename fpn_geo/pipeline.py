"""One scene in, a building GeoPackage (and probability COG) out, in three steps that both callers share, each in
its own module:

1. `fpn_geo.plan.plan_scene`: check the scene and the checkpoint's metadata, lay out the window grid and blocks.
2. `fpn_geo.blocks.process_blocks`: per block, read, predict, blend, label and trace; polygons come back.
3. `fpn_geo.scene_writer.SceneWriter`: join edge pieces, write the GeoPackage, the COG and provenance, atomically.

`segment()` runs the three in this process (the CLI); the Prefect flows run step 2 on Dask workers. This module
holds the loaded model (`Segmenter`) and re-exports the steps' public names, the library's entry for both.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fpn_geo.blocks import BlockResult, process_blocks
from fpn_geo.config import SegmentConfig
from fpn_geo.model.meta import ModelMeta
from fpn_geo.outputs import SceneOutputs, default_probability_path
from fpn_geo.plan import ScenePlan, plan_from_checkpoint, plan_scene
from fpn_geo.provenance import scene_sha256, utc_now
from fpn_geo.scene_writer import RunSummary, SceneWriter

if TYPE_CHECKING:
    from fpn_geo.predictor import Predictor

# torch is imported only where a model runs (load_segmenter, process_blocks): the flow side, which plans and
# writes, starts about 4 s sooner without it.

__all__ = [
    "BlockResult", "RunSummary", "ScenePlan", "SceneWriter", "Segmenter", "cached_segmenter",
    "default_probability_path", "load_segmenter", "plan_from_checkpoint", "plan_scene", "process_blocks",
    "scene_sha256", "segment",
]

log = logging.getLogger("fpn_geo")


@dataclass(frozen=True)
class Segmenter:
    """A predictor and the checkpoint metadata that says how to feed it."""

    predictor: Predictor
    meta: ModelMeta
    checkpoint_path: str | None = None
    device: str = "cpu"


def load_segmenter(checkpoint: str | Path, device: str = "auto", compile: bool = False) -> Segmenter:
    """The checkpoint's model as a ``Segmenter`` on ``device`` (auto: CUDA when there is one)."""
    from fpn_geo.device import resolve_device
    from fpn_geo.model.checkpoint import load_checkpoint
    from fpn_geo.predictor import SegmenterPredictor

    model, meta = load_checkpoint(checkpoint)
    dev = resolve_device(device)
    return Segmenter(SegmenterPredictor(model, meta, dev, compile), meta, str(checkpoint), dev)


def cached_segmenter(checkpoint: str | Path, device: str = "auto", compile: bool = False) -> Segmenter:
    """`load_segmenter`, once per process: a worker that runs many blocks loads the model once.

    Keyed by the checkpoint's real path, size and modification time, so a replaced file is reloaded.
    """
    p = Path(checkpoint).resolve()
    st = p.stat() if p.exists() else None
    return _cached_segmenter(str(p), st.st_size if st else -1, st.st_mtime_ns if st else -1, device, compile)


@functools.lru_cache(maxsize=2)
def _cached_segmenter(path: str, size: int, mtime_ns: int, device: str, compile: bool) -> Segmenter:
    log.info("loading checkpoint %s on %s (pid %d)", path, device, os.getpid())
    return load_segmenter(path, device, compile)


def segment(
    scene_path: str,
    segmenter: Segmenter,
    out: str | Path | SceneOutputs,
    cfg: SegmentConfig,
    probability_out: str | Path | None = None,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    plan: ScenePlan | None = None,
) -> RunSummary:
    """Plan (unless the caller did: `plan`), process every block here, write. Nothing appears at `out` unless the
    run succeeds. `out`: a path, or outputs the caller checked already (`fpn_geo.outputs.scene_outputs`)."""
    t0, started = time.perf_counter(), utc_now()
    plan = plan or plan_scene(scene_path, segmenter.meta, cfg, segmenter.checkpoint_path)
    if on_start:
        on_start(len(plan.grid))
    with SceneWriter(plan, out, probability_out) as writer:
        for result in process_blocks(plan, plan.blocks, segmenter, on_batch):
            writer.add(result)
        return writer.finish(t0, started)
