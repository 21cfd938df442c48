"""psa's wide ResNet-38 ("resnet38d"), with psa's parameter names, at output stride 8.

Wu, Shen & van den Hengel's model A1 as psa uses it: pre-activation residual blocks, 64 ->
128 -> 256 -> 512 channels through three stride-2 blocks, then dilated blocks of 1024, 2048
and 4096 channels. Names follow psa's network/resnet38d.py (conv1a, b2, b2_1, ..., b7, bn7,
with bn_branch2a / conv_branch2a / bn_branch2b1 / conv_branch2b1 / conv_branch1 inside), so
psa's state dicts load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone


class ResBlock(nn.Module):
    """Pre-activation block: BN-ReLU, 3x3 (stride), BN-ReLU, 3x3 (dilation), plus shortcut.

    The shortcut is a 1x1 conv of the pre-activated input when the shape changes, else the
    input itself.
    """

    def __init__(
        self,
        cin: int,
        mid: int,
        cout: int,
        stride: int = 1,
        first_dilation: int | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.same_shape = cin == cout and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(cin)
        self.conv_branch2a = nn.Conv2d(
            cin, mid, 3, stride, padding=first_dilation, dilation=first_dilation, bias=False
        )
        self.bn_branch2b1 = nn.BatchNorm2d(mid)
        self.conv_branch2b1 = nn.Conv2d(
            mid, cout, 3, padding=dilation, dilation=dilation, bias=False
        )
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(block output, ReLU(BN(x))): psa reads the latter as a feature of the stage before."""
        preact = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(preact)
        out = self.conv_branch2a(preact)
        out = self.conv_branch2b1(F.relu(self.bn_branch2b1(out)))
        return shortcut + out, preact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_preact(x)[0]


class BottleneckBlock(nn.Module):
    """Pre-activation bottleneck: 1x1 to cout/4, 3x3 (dilation) to cout/2, 1x1 to cout.

    Channel dropout before the 3x3 and the last 1x1 (psa: 0.3 in b6, 0.5 in b7); the
    shortcut is always a 1x1 conv of the pre-activated input.
    """

    def __init__(
        self, cin: int, cout: int, stride: int = 1, dilation: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(cin)
        self.conv_branch2a = nn.Conv2d(cin, cout // 4, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(cout // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(
            cout // 4, cout // 2, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.bn_branch2b2 = nn.BatchNorm2d(cout // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(cout // 2, cout, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(block output, ReLU(BN(x)))."""
        preact = F.relu(self.bn_branch2a(x))
        shortcut = self.conv_branch1(preact)
        out = self.conv_branch2a(preact)
        out = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(out))))
        out = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(out))))
        return shortcut + out, preact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_preact(x)[0]


class ResNet38(Backbone):
    """psa's ResNet-38 at output stride 8 (about 104 M parameters).

    Features (psa resnet38d forward_as_dict): "conv4" = the pre-activation of b5 (512 ch),
    "conv5" = the pre-activation of b6 (1024 ch), "conv6" = ReLU(bn7(b7)) (4096 ch, the CAM
    feature). `freeze()` fixes BatchNorm and conv1a, b2, b2_1, b2_2, as psa's resnet38_cls
    and resnet38_aff do.

    Pretrained weights: psa starts from the ImageNet model ilsvrc-cls_rna-a1_cls1000_ep-0001
    .params, an MXNet file. Convert it once with psa's convert_mxnet_to_torch (needs mxnet)
    and torch.save the dict: that dict, in these names, is what `weights` accepts (its
    missing num_batches_tracked counters are fine). psa's trained res38_cls.pth /
    res38_aff.pth belong to whole networks: load them with `load_psa_checkpoint`.
    """

    name = "resnet38"
    feature_channels = (512, 1024, 4096)
    signature_key = "conv1a.weight"
    ignored_weight_prefixes = ("fc8.",)

    def __init__(self) -> None:
        super().__init__()
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)

        self.b2 = ResBlock(64, 128, 128, stride=2)
        self.b2_1 = ResBlock(128, 128, 128)
        self.b2_2 = ResBlock(128, 128, 128)

        self.b3 = ResBlock(128, 256, 256, stride=2)
        self.b3_1 = ResBlock(256, 256, 256)
        self.b3_2 = ResBlock(256, 256, 256)

        self.b4 = ResBlock(256, 512, 512, stride=2)
        self.b4_1 = ResBlock(512, 512, 512)
        self.b4_2 = ResBlock(512, 512, 512)
        self.b4_3 = ResBlock(512, 512, 512)
        self.b4_4 = ResBlock(512, 512, 512)
        self.b4_5 = ResBlock(512, 512, 512)

        # stride 8 reached; from here dilation keeps the map size (docs/method.md §1)
        self.b5 = ResBlock(512, 512, 1024, first_dilation=1, dilation=2)
        self.b5_1 = ResBlock(1024, 512, 1024, dilation=2)
        self.b5_2 = ResBlock(1024, 512, 1024, dilation=2)

        self.b6 = BottleneckBlock(1024, 2048, dilation=4, dropout=0.3)
        self.b7 = BottleneckBlock(2048, 4096, dilation=4, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(4096)

    def first_blocks(self) -> list[nn.Module]:
        return [self.conv1a, self.b2, self.b2_1, self.b2_2]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (B, 512, h, w), (B, 1024, h, w), (B, 4096, h, w); h = ceil(H/8)."""
        x = self.conv1a(x)
        for block in (
            self.b2,
            self.b2_1,
            self.b2_2,
            self.b3,
            self.b3_1,
            self.b3_2,
            self.b4,
            self.b4_1,
            self.b4_2,
            self.b4_3,
            self.b4_4,
            self.b4_5,
        ):
            x = block(x)
        x, conv4 = self.b5.forward_with_preact(x)
        x = self.b5_2(self.b5_1(x))
        x, conv5 = self.b6.forward_with_preact(x)
        conv6 = F.relu(self.bn7(self.b7(x)))
        return conv4, conv5, conv6
