"""What each training pixel should be: the class names, the ignore value, and the target from building ids.

One home for both trainers: the classic loop burns targets from its sources (``dataset``), the cache
(``cache``) burns them once for the torch-only trainer, and the loss skips ``IGNORE``. Free of torch
and of the geo stack at import (``fpn_geo.truth`` is imported when a target is made).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fpn_geo.model.meta import CLASSES_2

if TYPE_CHECKING:
    import numpy as np

IGNORE = 255
"""Target value with no loss: outside the image's valid area, padding, and the held-out blocks."""

TARGET_KINDS = ("contact", "separator")
"""The third class: ``contact`` (where two buildings touch) or ``separator`` (every building's 1-px inner border
plus the gaps between buildings)."""


def classes_for(kind: str) -> tuple[str, ...]:
    """The model's class names for a target kind: background, building, then the kind."""
    if kind not in TARGET_KINDS:
        raise ValueError(f"target {kind!r}; expected one of {list(TARGET_KINDS)}")
    return (*CLASSES_2, kind)


def target_from_instances(instances: np.ndarray, kind: str, gap_px: int) -> np.ndarray:
    """The uint8 target of an instance-id raster: 0 background, 1 building (interior), 2 contact or separator."""
    import numpy as np

    from fpn_geo.truth import BUILDING, CONTACT, contact_from_instances, separator_target

    instances = instances.astype(np.int32, copy=False)
    if kind == "separator":
        return separator_target(instances, gap_px)
    target = (instances > 0).astype(np.uint8) * BUILDING
    target[contact_from_instances(instances, gap_px)] = CONTACT
    return target
