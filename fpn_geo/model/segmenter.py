"""The FPN-ResNet building segmenter: backbone -> FPN -> semantic head."""

from __future__ import annotations

import torch
from torch import nn

from fpn_geo.errors import ModelInputError
from fpn_geo.model.backbone import ResNetBackbone
from fpn_geo.model.fpn import FPN
from fpn_geo.model.semantic_head import SemanticHead


class BuildingSegmenter(nn.Module):
    """Per-pixel class logits at input resolution. Input: normalized float (N, bands, H, W), H and W multiples of 32."""

    def __init__(
        self,
        depth: int = 50,
        in_channels: int = 3,
        num_classes: int = 3,
        fpn_channels: int = 256,
        head_channels: int = 128,
    ) -> None:
        super().__init__()
        self.fpn = FPN(ResNetBackbone(depth, in_channels), out_channels=fpn_channels)
        self.head = SemanticHead(self.fpn.output_shape(), num_classes, head_channels)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.size_divisibility = self.fpn.size_divisibility

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ModelInputError(f"Expected a (N, bands, H, W) tensor, got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ModelInputError(f"Model takes {self.in_channels} bands, got {c}")
        d = self.size_divisibility
        if h % d or w % d:
            want_h, want_w = -(-h // d) * d, -(-w // d) * d
            raise ModelInputError(
                f"Wrong input size height={h}, width={w}: both must be multiples of {d}; pad to ({want_h}, {want_w})"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.head(self.fpn(x))
