"""The Python face of affext's kernels: one module per op."""

from .affinity import pairwise_affinity
from .dense_crf import dense_crf
from .pair_loss import AffinityLabels, PairLoss, affinity_labels, pair_loss
from .par import pixel_adaptive_refine
from .random_walk import random_walk

__all__ = [
    "AffinityLabels",
    "PairLoss",
    "affinity_labels",
    "dense_crf",
    "pair_loss",
    "pairwise_affinity",
    "pixel_adaptive_refine",
    "random_walk",
]
