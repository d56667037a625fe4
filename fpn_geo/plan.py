"""Step 1 of a scene's path: check the scene and the checkpoint's metadata, lay the window grid on the model's
grid (the scene resampled to the model's GSD) and cut it into blocks. No pixels are read: a bad input fails here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import rasterio

from fpn_geo.config import SegmentConfig, with_model_defaults
from fpn_geo.georef import Georef, model_scale, scaled_shape
from fpn_geo.model.meta import ModelMeta, read_verified_meta
from fpn_geo.radiometry import IDENTITY, Radiometry, resolve_radiometry
from fpn_geo.scene import SceneInfo, open_scene
from fpn_geo.tiling import Block, BlockLayout, Grid, clamp_window, make_blocks, make_grid


@dataclass(frozen=True)
class ScenePlan:
    """Everything a block needs besides the model and the pixels; small enough to send to any worker."""

    scene: SceneInfo
    meta: ModelMeta
    cfg: SegmentConfig
    scale: float  # model pixels per scene pixel
    grid: Grid  # windows on the model's grid
    blocks: BlockLayout
    georef: Georef  # the model's grid on the ground
    checkpoint_path: str | None = None
    radiometry: Radiometry = IDENTITY  # the scene's pixel values -> the model's input range
    model_selection: str | None = None  # how the checkpoint was chosen: "explicit" or "auto (...)" (model.registry)

    @property
    def channels(self) -> int:
        return self.meta.channels

    @property
    def separates(self) -> bool:
        """Whether touching buildings are split with the separator channel: the model has it and it is wanted."""
        return self.channels > 1 and self.cfg.separate_touching

    @property
    def grid_hw(self) -> tuple[int, int]:
        return self.grid.height, self.grid.width

    def context(self, block: Block) -> Block:
        """The area a block blends and labels: the block and up to one overlap of its neighbours on each side."""
        return self.blocks.context(block, self.grid.overlap)


def plan_scene(
    scene_path: str, meta: ModelMeta, cfg: SegmentConfig, checkpoint_path: str | None = None,
    model_selection: str | None = None,
) -> ScenePlan:
    """Check the scene against the model and lay out the work; a bad input fails here, before any pixel is read.
    The plan's config has the checkpoint's post-processing defaults in the keys the user did not set."""
    cfg = with_model_defaults(cfg, meta.postprocess)
    scene = open_scene(scene_path, meta.bands)
    with rasterio.open(scene.path) as src:
        radiometry = resolve_radiometry(src, meta.bands, meta.input_range, cfg.radiometry)
    scale = model_scale(scene.gsd_m, meta.gsd_m, cfg.match_gsd)
    cfg = clamp_window(cfg, scene.height, scene.width, scale)
    height, width = scaled_shape(scene.height, scene.width, scale)
    grid = make_grid(height, width, cfg.window, cfg.overlap)
    georef = scene.georef().scaled(scale, height, width)
    blocks = make_blocks(grid, cfg.block_windows)
    return ScenePlan(scene, meta, cfg, scale, grid, blocks, georef, checkpoint_path, radiometry, model_selection)


def plan_from_checkpoint(
    scene_path: str, checkpoint: str | Path, cfg: SegmentConfig, model_selection: str | None = None
) -> ScenePlan:
    """`plan_scene` with the checkpoint's metadata, its weights' sha256 checked, without torch or the model."""
    return plan_scene(scene_path, read_verified_meta(checkpoint), cfg, str(checkpoint), model_selection)
