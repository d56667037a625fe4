"""ResNet backbone exposing C2-C5 (res2..res5) for any number of input bands."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models._utils import IntermediateLayerGetter

RESNET_DEPTHS = {18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50, 101: resnet.resnet101}
_STAGES = {"layer1": "res2", "layer2": "res3", "layer3": "res4", "layer4": "res5"}


class ResNetBackbone(nn.Module):
    """A torchvision ResNet cut after each stage, as detectron2 names them (res2..res5).

    `output_shape()` is all a neck needs to know: channels and stride of each level.
    """

    size_divisibility = 32

    def __init__(self, depth: int = 50, in_channels: int = 3) -> None:
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"ResNet depth {depth} is not supported; use one of {sorted(RESNET_DEPTHS)}")
        net = RESNET_DEPTHS[depth](weights=None)
        if in_channels != 3:
            # Same stem, other band count: the only layer whose shape depends on the input.
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.body = IntermediateLayerGetter(net, return_layers=_STAGES)
        width = 64 if depth < 50 else 256
        self._shape = {f"res{i + 2}": (width * 2**i, 2 ** (i + 2)) for i in range(4)}
        self.depth = depth
        self.in_channels = in_channels

    def output_shape(self) -> dict[str, tuple[int, int]]:
        """{level: (channels, stride)} for res2..res5."""
        return dict(self._shape)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(self.body(x))
