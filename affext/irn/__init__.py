"""IRN (Ahn, Cho & Kwak, CVPR 2019) on affext's kernels: boundary-derived path affinities,
`propagate_to_edge` without the N x N matrix, and IRN's semantic-label step."""

from .walk import path_affinity, path_points, propagate_to_edge

__all__ = ["path_affinity", "path_points", "propagate_to_edge"]
