"""The segmenter: backbone, FPN, semantic head, and its checkpoint format.

Names are resolved on first use, so `fpn_geo.model.meta` (a checkpoint's metadata) can be read without torch.
"""

from __future__ import annotations

from fpn_geo._lazy import lazy_exports

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
