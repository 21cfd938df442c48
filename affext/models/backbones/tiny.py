"""A small CNN at output stride 8, random init, for the demo and the tests (CPU-fast)."""
from __future__ import annotations

import torch
from torch import nn

from .base import Backbone


def _conv_gn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    # GroupNorm, not BatchNorm: tiny always trains from scratch on small batches, and GN
    # behaves the same in train and eval mode, so CAMs at inference match training.
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.GroupNorm(8, cout),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    """Two 3x3 conv-GN-ReLU layers with an identity shortcut (same channels and size)."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = _conv_gn_relu(channels, channels, dilation=dilation)
        self.conv2 = _conv_gn_relu(channels, channels, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


class TinyBackbone(Backbone):
    """Seven 3x3 conv layers (GroupNorm, ReLU), stride 8, dilations 2 and 4 after that.

    Three stride-2 layers bring a 96x96 image to 12x12; the two dilated stages then widen the
    receptive field (about 100 px) without shrinking the map, as in the big backbones.
    Feature maps: stage3 (64 ch), stage4 (96 ch), stage5 (128 ch, the CAM feature).
    About 0.5 M parameters and 0.1 GMAC for a 96x96 image.
    """

    name = "tiny"
    feature_channels = (64, 96, 128)

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = _conv_gn_relu(3, 32, stride=2)            # /2
        self.stage2 = _conv_gn_relu(32, 48, stride=2)           # /4
        self.stage3 = nn.Sequential(_conv_gn_relu(48, 64, stride=2),   # /8
                                    _conv_gn_relu(64, 64))
        self.stage4 = nn.Sequential(_conv_gn_relu(64, 96, dilation=2),
                                    _Residual(96, dilation=2))
        self.stage5 = nn.Sequential(_conv_gn_relu(96, 128, dilation=4),
                                    _conv_gn_relu(128, 128, dilation=4))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (B, 64, h, w), (B, 96, h, w), (B, 128, h, w); h = ceil(H/8)."""
        f3 = self.stage3(self.stage2(self.stage1(x)))
        f4 = self.stage4(f3)
        f5 = self.stage5(f4)
        return f3, f4, f5
