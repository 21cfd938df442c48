"""The segmentation network trained on the pseudo labels (docs/method.md §8): a backbone at
output stride 8 and DeepLab v3's ASPP head (Chen et al., 2017, "Rethinking Atrous
Convolution for Semantic Image Segmentation").

Why ASPP and not DeepLab v1's LargeFOV (one 3x3 conv at dilation 12): the head has to bring
the context that says which class a pixel belongs to, and under image-level supervision that
evidence often sits on another part of the object (the part the CAMs found). LargeFOV samples
one ring of taps 12 cells away: with a shallow backbone (tiny sees about 7 cells) the
distances in between are never seen. ASPP's parallel rates cover the near, middle and far
context together, and its image-pooling branch hands every pixel a summary of the whole image
(which classes are in it), which DeepLab v3 added exactly for rates that approach the map
size. It is also the head most weakly supervised methods after psa train on their pseudo
labels. Its cost over LargeFOV is a few 3x3 convs on the stride-8 map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone
from .base import Network

# DeepLab v3's rates at output stride 8 (its (6, 12, 18) at stride 16, doubled).
DEEPLAB_RATES = (12, 24, 36)


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SegNet(Network):
    """Backbone (stride 8) -> ASPP -> 1x1 conv to num_classes + 1 logits (background first).

    ASPP (DeepLab v3): a 1x1 branch, one 3x3 branch per dilation rate and an image-pooling
    branch (global average, 1x1 conv, spread back over the map), concatenated, a 1x1
    projection, dropout, then the classifier. Every conv but the pooling branch's and the
    classifier is followed by BatchNorm and ReLU, as in DeepLab v3; the pooling branch's
    1x1 conv has a bias and no BatchNorm instead, so that a batch of one image trains too
    (BatchNorm over a 1x1 map of one image has no statistics).

    Args:
        backbone: a Backbone (`build_backbone`); its deepest map feeds the head.
        num_classes: foreground classes C (the dataset's `num_classes`); the network gives
            C + 1 logits, index 0 the background, as the pseudo labels number them.
        channels: width of each ASPP branch and of the projection (DeepLab v3: 256).
        rates: dilation rates of the 3x3 branches, in cells of the stride-8 map. DeepLab v3
            trains them at about 0.18, 0.36 and 0.55 of the crop's map side ((6, 12, 18) on
            513 px crops at stride 16, (12, 24, 36) at stride 8); smaller crops call for
            proportionally smaller rates.
        dropout: channel dropout after the projection (torchvision's DeepLab head: 0.5).
    """

    kind = "seg"

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int = 20,
        channels: int = 256,
        rates: Sequence[int] = DEEPLAB_RATES,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(backbone)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        rates = tuple(int(r) for r in rates)
        if any(r < 1 for r in rates):
            raise ValueError(f"rates must be positive dilations, got {rates}")
        self.num_classes = num_classes
        self.rates = rates
        cin = backbone.feature_channels[2]
        self.aspp = nn.ModuleList(
            [_conv_bn_relu(cin, channels)] + [_conv_bn_relu(cin, channels, 3, r) for r in rates]
        )
        self.aspp_pool = nn.Conv2d(cin, channels, 1)
        self.project = _conv_bn_relu(channels * (len(rates) + 2), channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes + 1, 1)
        for m in (self.aspp, self.aspp_pool, self.project):
            for conv in m.modules():
                if isinstance(conv, nn.Conv2d):
                    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        nn.init.zeros_(self.aspp_pool.bias)
        # DeepLab's classifier initialisation: small weights, zero bias
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, num_classes + 1, ceil(H/8), ceil(W/8)) logits."""
        feat = self.backbone(x)[2]
        pooled = F.relu(self.aspp_pool(feat.mean(dim=(2, 3), keepdim=True)))
        branches = [branch(feat) for branch in self.aspp]
        branches.append(pooled.expand(-1, -1, *feat.shape[-2:]))
        out = self.project(torch.cat(branches, dim=1))
        return self.classifier(self.dropout(out))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, num_classes + 1, H, W): forward's logits upsampled
        bilinearly to the input size (DeepLab v3 scores and trains at full resolution)."""
        return F.interpolate(self(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


def segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255
) -> torch.Tensor:
    """Mean per-pixel cross-entropy of (B, K, H, W) logits against (B, H, W) labels.

    Logits at another size than the labels (the network's stride-8 output) are upsampled
    bilinearly to the labels' size first. Pixels labelled `ignore_index` (the pseudo labels'
    and the crops' padding) are left out of the mean; a batch with none to learn from gives 0
    (with a gradient of zeros), not NaN.
    """
    if logits.dim() != 4 or labels.dim() != 3 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"logits must be (B, K, H, W) and labels (B, H, W), got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    labels = labels.long()
    if not bool((labels != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=ignore_index)


def head_num_classes(state: dict[str, torch.Tensor]) -> int | None:
    """The foreground class count C of a SegNet state dict (its classifier has C + 1 rows),
    or None when it holds no SegNet head."""
    weight = state.get("classifier.weight")
    return None if weight is None else int(weight.shape[0]) - 1
