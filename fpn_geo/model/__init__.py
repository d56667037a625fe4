"""The segmenter: backbone, FPN, semantic head, and its checkpoint format.

Names are resolved on first use, so `fpn_geo.model.meta` (a checkpoint's metadata) can be read without torch.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "BuildingSegmenter": "fpn_geo.model.segmenter",
    "ModelMeta": "fpn_geo.model.meta",
    "CLASSES_3": "fpn_geo.model.meta",
    "build_model": "fpn_geo.model.checkpoint",
    "load_checkpoint": "fpn_geo.model.checkpoint",
    "save_checkpoint": "fpn_geo.model.checkpoint",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
