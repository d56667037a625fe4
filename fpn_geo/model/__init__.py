"""The segmenter: backbone, FPN, semantic head, and its checkpoint format.

Names are resolved on first use, so `fpn_geo.model.meta` (a checkpoint's metadata) can be read without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fpn_geo._lazy import lazy_exports

if TYPE_CHECKING:  # the lazy names, spelled out for type checkers
    from fpn_geo.model.checkpoint import build_model as build_model
    from fpn_geo.model.checkpoint import load_checkpoint as load_checkpoint
    from fpn_geo.model.checkpoint import save_checkpoint as save_checkpoint
    from fpn_geo.model.meta import CLASSES_3 as CLASSES_3
    from fpn_geo.model.meta import ModelMeta as ModelMeta
    from fpn_geo.model.segmenter import BuildingSegmenter as BuildingSegmenter

_WHERE = {
    "BuildingSegmenter": "fpn_geo.model.segmenter",
    "ModelMeta": "fpn_geo.model.meta",
    "CLASSES_3": "fpn_geo.model.meta",
    "build_model": "fpn_geo.model.checkpoint",
    "load_checkpoint": "fpn_geo.model.checkpoint",
    "save_checkpoint": "fpn_geo.model.checkpoint",
}
__all__ = list(_WHERE)

__getattr__ = lazy_exports(__name__, _WHERE)
