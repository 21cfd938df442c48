"""The Python face of affext's kernels: one module per op."""
from .affinity import pairwise_affinity

__all__ = ["pairwise_affinity"]
