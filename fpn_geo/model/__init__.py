"""The segmenter: backbone, FPN, semantic head, and its checkpoint format."""

from fpn_geo.model.checkpoint import ModelMeta, build_model, load_checkpoint, save_checkpoint
from fpn_geo.model.segmenter import CLASSES_2, CLASSES_3, BuildingSegmenter

__all__ = ["BuildingSegmenter", "ModelMeta", "build_model", "load_checkpoint", "save_checkpoint", "CLASSES_2", "CLASSES_3"]
