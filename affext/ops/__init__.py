"""The Python face of affext's kernels: one module per op."""
from .affinity import pairwise_affinity
from .random_walk import random_walk

__all__ = ["pairwise_affinity", "random_walk"]
