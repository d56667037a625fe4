"""Feature pyramid (P2-P5) on top of a backbone, using torchvision's FPN."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from fpn_geo.model.backbone import ResNetBackbone


class FPN(nn.Module):
    """Wraps a backbone; emits p2..p5 with stride == 2**level (all that the semantic head reads)."""

    def __init__(self, backbone: ResNetBackbone, out_channels: int = 256) -> None:
        super().__init__()
        self.backbone = backbone
        shapes = backbone.output_shape()
        self.in_features = list(shapes)
        self.fpn = FeaturePyramidNetwork(
            in_channels_list=[shapes[name][0] for name in self.in_features],
            out_channels=out_channels,
        )
        self.out_channels = out_channels
        self.size_divisibility = backbone.size_divisibility
        self._names = [f"p{int(name[3:])}" for name in self.in_features]

    def output_shape(self) -> dict[str, tuple[int, int]]:
        return {name: (self.out_channels, 2 ** int(name[1:])) for name in self._names}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        out = self.fpn(OrderedDict((name, feats[name]) for name in self.in_features))
        return dict(zip(self._names, out.values()))
