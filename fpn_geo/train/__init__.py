"""Training the building segmenter from GeoTIFFs and GIS labels.

Modules by role, read in the order the data flows:
``config`` (validated YAML), ``dataset`` (sources at the model GSD, chips as sample dicts),
``samplers`` (where to read: random for training, a grid for validation), ``augment``,
``targets`` (class names, IGNORE, the target from building ids), ``losses``, ``core`` (what one step is,
for both trainers: model builder, warm start, optimizer, schedule, checkpoint writer), ``ledger`` (every run
behind a checkpoint), ``validate`` (the held-out blocks through the production path) and ``loop`` (the epochs,
checkpoints, resume, metrics CSV and curve). The GPU path: ``cache`` (every source decoded once per
model GSD into one compressed file, here, with rasterio) and ``gpu`` (a torch-only trainer on that cache).

Names are resolved on first use, so ``fpn_geo.train.gpu`` imports without pydantic, yaml or rasterio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fpn_geo._lazy import lazy_exports

if TYPE_CHECKING:  # the lazy names, spelled out for type checkers
    from fpn_geo.train.config import TrainConfig as TrainConfig
    from fpn_geo.train.config import load_train_config as load_train_config
    from fpn_geo.train.loop import train as train

_WHERE = {
    "TrainConfig": "fpn_geo.train.config",
    "load_train_config": "fpn_geo.train.config",
    "train": "fpn_geo.train.loop",
}
__all__ = list(_WHERE)

__getattr__ = lazy_exports(__name__, _WHERE)
