"""ResNet-50 with torchvision's parameter names, layer3/layer4 dilated to output stride 8."""

from __future__ import annotations

import torch
from torch import nn

from .base import Backbone


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 with expansion 4; stride on the 3x3 (ResNet v1.5)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


def resnet50_modules(
    strides: tuple[int, int, int, int], dilate: tuple[bool, bool, bool, bool]
) -> dict[str, nn.Module]:
    """torchvision's ResNet-50 modules by name (conv1, bn1, relu, maxpool, layer1..layer4), in
    registration order. Layer i has stride strides[i]; a dilated layer keeps stride 1 and
    doubles the dilation from its second block on, as torchvision's
    replace_stride_with_dilation does."""
    modules: dict[str, nn.Module] = {
        "conv1": nn.Conv2d(3, 64, 7, 2, padding=3, bias=False),
        "bn1": nn.BatchNorm2d(64),
        "relu": nn.ReLU(inplace=True),
        "maxpool": nn.MaxPool2d(3, 2, padding=1),
    }
    inplanes, dilation = 64, 1
    for i, (planes, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        stride, first_dilation = strides[i], dilation
        if dilate[i]:
            stride, dilation = 1, dilation * 2
        downsample = None
        if stride != 1 or inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
        layers = [Bottleneck(inplanes, planes, stride, first_dilation, downsample)]
        inplanes = planes * 4
        layers += [Bottleneck(inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        modules[f"layer{i + 1}"] = nn.Sequential(*layers)
    return modules


class ResNet50(Backbone):
    """ResNet-50 at output stride 8; features layer2 (512), layer3 (1024), layer4 (2048).

    Parameter names are torchvision's (conv1, bn1, layer1..layer4 of Bottleneck blocks with
    downsample.0/.1), so torchvision's ImageNet state-dict file loads strictly (fc.* is
    dropped). layer3 and layer4 keep stride 1 and dilate instead, as torchvision's
    replace_stride_with_dilation=[False, True, True]: the first block of layer3 has dilation
    1 and the others 2; the first block of layer4 has 2 and the others 4.
    `freeze()` fixes BatchNorm and the stem (conv1, bn1), as IRNet fine-tunes ResNet-50.
    """

    name = "resnet50"
    feature_channels = (512, 1024, 2048)
    signature_key = "layer1.0.conv1.weight"
    ignored_weight_prefixes = ("fc.",)

    def __init__(self) -> None:
        super().__init__()
        for name, module in resnet50_modules((1, 2, 2, 2), (False, False, True, True)).items():
            self.add_module(name, module)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def first_blocks(self) -> list[nn.Module]:
        return [self.conv1, self.bn1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (B, 512, h, w), (B, 1024, h, w), (B, 2048, h, w); h = ceil(H/8)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f2 = self.layer2(self.layer1(x))
        f3 = self.layer3(f2)
        return f2, f3, self.layer4(f3)
