"""The classification network that gives class activation maps (docs/method.md §1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone
from .base import Network


class CAMNet(Network):
    """Backbone -> dropout -> global average pooling -> 1x1 conv to class logits, no bias.

    Layer names follow psa's resnet38_cls (dropout7, fc8), so with the resnet38 backbone
    psa's res38_cls.pth loads (`load_psa_checkpoint`).

    Args:
        backbone: a Backbone (`build_backbone`).
        num_classes: foreground classes (20 for PASCAL VOC; background has no logit).
        dropout: channel dropout before pooling (psa: Dropout2d(0.5)).
    """

    kind = "cam"

    def __init__(self, backbone: Backbone, num_classes: int = 20, dropout: float = 0.5) -> None:
        super().__init__(backbone)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.dropout7 = nn.Dropout2d(dropout)
        self.fc8 = nn.Conv2d(backbone.feature_channels[2], num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, num_classes) logits."""
        feat = self.backbone(x)[2]
        feat = self.dropout7(feat)
        feat = feat.mean(dim=(2, 3), keepdim=True)
        return self.fc8(feat).flatten(1)

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, num_classes, ceil(H/8), ceil(W/8)) CAMs.

        M_c = ReLU(w_c . f(x, y)) with the classifier's own weights (docs/method.md §1);
        no dropout, so call it in eval mode for deterministic maps.
        """
        feat = self.backbone(x)[2]
        return F.relu(F.conv2d(feat, self.fc8.weight))


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multilabel soft-margin loss of (B, C) logits against (B, C) 0/1 image labels.

    The mean over classes and images of the per-class binary cross-entropy with logits
    (docs/method.md §1; psa train_cls).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, C), got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape:
        raise ValueError(
            f"labels must have the logits' shape {tuple(logits.shape)}, got {tuple(labels.shape)}"
        )
    return F.multilabel_soft_margin_loss(logits, labels.to(logits.dtype))
