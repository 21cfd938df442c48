"""IRN's ResNet-50 and its class-boundary branch, with IRN's parameter names, so that the
res50_irn.pth that IRN's train_irn.py saves loads directly (Ahn, Cho & Kwak, CVPR 2019).

Only what the semantic labels need is built: the backbone (`resnet50.*`) and the boundary
branch (`fc_edge1` .. `fc_edge6`). IRN's file holds the same tensors again under aliases
(`stage1..5`, `backbone`, `edge_layers`), the displacement branch (`fc_dp*`, `dp_layers`,
`mean_shift`) and training buffers (`path_indices*`, `disp_target`); those are ignored.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..models.backbones.base import StateDict, load_strict, read_state_dict
from ..models.backbones.resnet50 import resnet50_modules
from .files import STRIDE

CROP_SIZE = 512  # IRN's training crop, and the canvas it pads every image to at inference


class IRNResNet50(nn.Module):
    """ResNet-50 as IRN configures it: torchvision's names, strides (2, 2, 2, 1) for conv1,
    layer2, layer3, layer4 and no dilation (output stride 16), BatchNorm always in eval mode
    (use the module in eval mode)."""

    def __init__(self) -> None:
        super().__init__()
        for name, module in resnet50_modules((1, 2, 2, 1), (False,) * 4).items():
            self.add_module(name, module)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, 3, H, W) -> the five stages' outputs: 64 and 256 channels at stride 4, 512 at
        8, 1024 and 2048 at 16."""
        x1 = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x2 = self.layer1(x1)
        x3 = self.layer2(x2)
        x4 = self.layer3(x3)
        return x1, x2, x3, x4, self.layer4(x4)


def _edge_head(channels: int, upsample: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(channels, 32, 1, bias=False), nn.GroupNorm(4, 32)]
    if upsample > 1:
        layers.append(nn.Upsample(scale_factor=upsample, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class IRNEdgeNet(nn.Module):
    """IRN's class-boundary network: ResNet-50 and the edge branch (1x1 conv to 32 channels,
    GroupNorm(4), ReLU from each of the five stages, brought to stride 4, concatenated, 1x1
    conv with bias to one logit).

    crop_size: the canvas every image is padded to (right and bottom, with zeros after
    normalisation) before the network, as IRN's EdgeDisplacement does; GroupNorm's statistics
    span the whole canvas, so IRN's labels need IRN's 512. A larger image is padded to its own
    size (IRN's code cannot take one).
    """

    def __init__(self, crop_size: int = CROP_SIZE) -> None:
        super().__init__()
        self.crop_size = crop_size
        self.resnet50 = IRNResNet50()
        self.fc_edge1 = _edge_head(64)
        self.fc_edge2 = _edge_head(256)
        self.fc_edge3 = _edge_head(512, 2)
        self.fc_edge4 = _edge_head(1024, 4)
        self.fc_edge5 = _edge_head(2048, 4)
        self.fc_edge6 = nn.Conv2d(160, 1, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, 1, H4, W4) boundary logits at stride 4
        (H4 = ceil(H / 4) after the stem's rounding)."""
        x1, x2, x3, x4, x5 = self.resnet50(x)
        edge2 = self.fc_edge2(x2)
        size = edge2.shape[-2:]
        parts = [self.fc_edge1(x1), edge2]
        for head, feat in ((self.fc_edge3, x3), (self.fc_edge4, x4), (self.fc_edge5, x5)):
            parts.append(head(feat)[..., : size[0], : size[1]])
        return self.fc_edge6(torch.cat(parts, dim=1))

    def boundary(self, image: torch.Tensor) -> torch.Tensor:
        """IRN's boundary map of one image: (3, H, W) normalised -> (h, w) in [0, 1] at
        stride 4, h = ceil(H / 4). As EdgeDisplacement: the image and its horizontal flip
        are padded to the canvas and run together, the logits cropped to (h, w), the flip's
        flipped back, the two averaged, then the sigmoid."""
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must have shape (3, H, W), got {tuple(image.shape)}")
        height, width = image.shape[-2:]
        h, w = (height - 1) // STRIDE + 1, (width - 1) // STRIDE + 1
        pair = torch.stack([image, image.flip(-1)])
        canvas_h, canvas_w = max(self.crop_size, height), max(self.crop_size, width)
        pair = F.pad(pair, (0, canvas_w - width, 0, canvas_h - height))
        logits = self(pair)[:, 0, :h, :w]
        return torch.sigmoid(logits[0] / 2 + logits[1].flip(-1) / 2)


def load_irn_weights(model: IRNEdgeNet, weights: str | os.PathLike | StateDict) -> IRNEdgeNet:
    """Load IRN's res50_irn.pth (a state dict of IRN's AffinityDisplacementLoss, Net or
    EdgeDisplacement) into model: every tensor the boundary branch needs must be there under
    IRN's name and shape; the file's other entries are ignored. Raises ValueError naming the
    file and the missing keys otherwise (IRN itself loads with strict=False, which would run
    with random weights)."""
    source = (
        f"IRN weights file {os.fspath(weights)}"
        if isinstance(weights, (str, os.PathLike))
        else "the IRN state dict"
    )
    state = read_state_dict(weights)
    wanted = model.state_dict()
    try:
        load_strict(
            model,
            {k: state[k] for k in wanted if k in state},
            what=source,
            target="IRN's ResNet-50 boundary network (resnet50.*, fc_edge1..6)",
        )
    except ValueError as exc:
        raise ValueError(f"{exc} Pass the res50_irn.pth that IRN's train_irn.py writes.") from None
    return model
