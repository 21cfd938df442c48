"""affext: fast AffinityNet (PSA) kernels and the weakly supervised pseudo-label pipeline."""

from ._extension import build_info
from ._version import __version__ as __version__
from .neighborhood import neighborhood_offsets, psa_layout
from .ops import (
    AffinityLabels,
    PairLoss,
    affinity_labels,
    dense_crf,
    pair_loss,
    pairwise_affinity,
    pixel_adaptive_refine,
    random_walk,
)

__all__ = [
    "AffinityLabels",
    "PairLoss",
    "affinity_labels",
    "build_info",
    "dense_crf",
    "neighborhood_offsets",
    "pair_loss",
    "pairwise_affinity",
    "pixel_adaptive_refine",
    "psa_layout",
    "random_walk",
]
