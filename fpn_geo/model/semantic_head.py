"""Panoptic-FPN semantic head (Kirillov et al. 2019): every level brought to 1/4 scale and summed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3_gn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution, GroupNorm(32), ReLU: the head's building block."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(32, out_channels),
        nn.ReLU(inplace=True),
    )


class UpsampleStage(nn.Sequential):
    """One level's path to 1/4 scale: (3x3 conv + GN + ReLU + 2x up) repeated; p2 gets only the conv."""

    def __init__(self, in_channels: int, channels: int, stride: int, common_stride: int = 4) -> None:
        steps = max(1, int(stride).bit_length() - int(common_stride).bit_length())
        layers: list[nn.Module] = []
        for i in range(steps):
            layers.append(conv3x3_gn_relu(in_channels if i == 0 else channels, channels))
            if stride != common_stride:
                layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
        super().__init__(*layers)


class SemanticHead(nn.Module):
    """Sum of per-level stages, a 1x1 conv to the classes, 4x bilinear up to input size."""

    def __init__(self, input_shape: dict[str, tuple[int, int]], num_classes: int, channels: int = 128) -> None:
        super().__init__()
        self.in_features = [name for name, (_, stride) in input_shape.items() if stride <= 32]
        self.stages = nn.ModuleDict(
            {name: UpsampleStage(input_shape[name][0], channels, input_shape[name][1]) for name in self.in_features}
        )
        self.predictor = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x = sum(self.stages[name](features[name]) for name in self.in_features)
        return F.interpolate(self.predictor(x), scale_factor=4, mode="bilinear", align_corners=False)
