"""AffinityNet: the feature whose L1 distances give pixel affinities (docs/method.md §3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import pairwise_affinity
from .backbones import Backbone
from .base import Network


class AffinityNet(Network):
    """Three backbone stages -> 1x1 convs to 64/128/256 channels -> concat -> 1x1 conv 448.

    f_aff = ELU(f9(cat(ELU(f8_3(s1)), ELU(f8_4(s2)), ELU(f8_5(s3))))), all 1x1 convs without
    bias (docs/method.md §3). Layer names and initialisation follow psa's resnet38_aff
    (f8_3, f8_4, f8_5 Kaiming-normal; f9 Xavier-uniform with gain 4), so with the resnet38
    backbone psa's res38_aff.pth loads (`load_psa_checkpoint`).

    Training: `aff = model.affinity(x, radius)` then `affext.pair_loss(aff, labels, radius,
    region).loss`.
    """

    kind = "aff"
    feature_channels = 448

    def __init__(self, backbone: Backbone) -> None:
        super().__init__(backbone)
        c3, c4, c5 = backbone.feature_channels
        self.f8_3 = nn.Conv2d(c3, 64, 1, bias=False)
        self.f8_4 = nn.Conv2d(c4, 128, 1, bias=False)
        self.f8_5 = nn.Conv2d(c5, 256, 1, bias=False)
        self.f9 = nn.Conv2d(448, 448, 1, bias=False)
        for conv in (self.f8_3, self.f8_4, self.f8_5):
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, 448, ceil(H/8), ceil(W/8)) affinity feature f_aff."""
        s3, s4, s5 = self.backbone(x)
        feat = torch.cat([F.elu(self.f8_3(s3)), F.elu(self.f8_4(s4)), F.elu(self.f8_5(s5))], dim=1)
        return F.elu(self.f9(feat))

    def affinity(self, x: torch.Tensor, radius: int = 5) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, K, h, w) affinities a_ij = exp(-mean_c |f_i - f_j|).

        K = len(affext.neighborhood_offsets(radius)); see affext.pairwise_affinity for the
        layout and for psa's (B, K, n_from) view.
        """
        return pairwise_affinity(self(x), radius)
