"""The measured cases: affext and each reference on the same inputs (performance.md)."""
from __future__ import annotations

import torch

from .measure import case
from .ops.affinity import pairwise_affinity
from .reference.affinity import psa_affinity


def _features(device: torch.device, batch: int, channels: int, size: int,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    feat = torch.randn(batch, channels, size, size, generator=gen, dtype=dtype)
    return feat.to(device).requires_grad_()


def _affinity_case(forward):
    def builder(device: torch.device, batch: int = 1, channels: int = 448, size: int = 56,
                radius: int = 5):
        feat = _features(device, batch, channels, size)

        def work():
            feat.grad = None
            forward(feat, radius).sum().backward()
        return work
    return builder


# Forward + backward of the affinity, C=448 on a 56x56 map (a 448 crop at stride 8).
case("affinity/affext")(_affinity_case(pairwise_affinity))
case("affinity/psa-dense")(_affinity_case(psa_affinity))
