"""Training the building segmenter from GeoTIFFs and GIS labels.

Modules by role, read in the order the data flows:
``config`` (validated YAML), ``dataset`` (sources at the model GSD, chips as sample dicts),
``samplers`` (where to read: random for training, a grid for validation), ``augment``,
``losses``, ``validate`` (predict the held-out block, vectorize, score) and ``loop`` (the epochs,
checkpoints, resume, metrics CSV and curve).
"""

from fpn_geo.train.config import SourceConfig, TrainConfig, load_train_config
from fpn_geo.train.loop import TrainResult, train

__all__ = ["SourceConfig", "TrainConfig", "TrainResult", "load_train_config", "train"]
