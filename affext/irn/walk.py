"""IRN's random walk (Ahn, Cho & Kwak, CVPR 2019) on affext's O(N) walk.

IRN derives the affinity of a pair of pixels from a class-boundary map B in [0, 1]: one minus
the largest B on the path between them, then walks CAMs with the same transition matrix as
psa (docs/method.md §5: T = A^beta / column sums, t = 2^exp_times steps) over every pair
inside the map. IRN builds that N x N matrix densely and squares it; here the pairs stay a
(B, K, H, W) stencil and `affext.random_walk` applies it t times (region "full").
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F

from ..neighborhood import check_radius, neighborhood_offsets
from ..ops.random_walk import random_walk


@cache
def path_points(radius: int = 5) -> tuple[tuple[tuple[int, int], ...], ...]:
    """For each half-disk offset o = (dy, dx) (neighborhood_offsets order), its path: the
    lattice points (y, x) of the box spanned by (0, 0) and o whose distance to the segment
    from (0, 0) to o is below 1, both endpoints included.

    Inside that box a point's projection on the line through (0, 0) and o falls within the
    segment, so its distance to the segment is |dy * x - dx * y| / |o| (distance to the line).
    """
    paths = []
    for dy, dx in neighborhood_offsets(check_radius(radius)):
        length_sq = dy * dy + dx * dx
        points = [
            (y, x)
            for y in range(min(0, dy), max(0, dy) + 1)
            for x in range(min(0, dx), max(0, dx) + 1)
            if (dy * x - dx * y) ** 2 < length_sq
        ]
        paths.append(tuple(points))
    return tuple(paths)


def _check_edge(edge: torch.Tensor, name: str = "edge") -> None:
    if not isinstance(edge, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(edge).__name__}")
    if not edge.is_floating_point():
        raise TypeError(f"{name} must be a floating-point boundary map, got {edge.dtype}")
    if edge.numel() and not bool(((edge >= 0) & (edge <= 1)).all()):
        low, high = float(edge.min()), float(edge.max())
        raise ValueError(
            f"{name} must be a boundary probability map with values in [0, 1], got values in "
            f"[{low:g}, {high:g}]"
            + (" or NaN" if bool(edge.isnan().any()) else "")
            + ": apply a sigmoid to boundary logits first"
        )


def path_affinity(edge: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """IRN's pair affinities from a class-boundary map, in affext's half-disk layout.

    Args:
        edge: (B, H, W) boundary probabilities in [0, 1] (IRN: the sigmoid of its edge branch).
        radius: neighbourhood radius (IRN's walk: 5).

    Returns:
        (B, K, H, W) with aff[b, k, y, x] = 1 - max of edge over the path (`path_points`) from
        (y, x) to (y, x) + o_k, and 0 where (y, x) + o_k lies off the map (IRN pads the
        boundary map with 1.0). Same dtype and device as edge; differentiable w.r.t. edge.
        This is the `aff` that `affext.random_walk(..., region="full")` takes.

    Raises:
        ValueError: edge not (B, H, W), or values outside [0, 1] or NaN.
    """
    _check_edge(edge)
    if edge.dim() != 3:
        raise ValueError(f"edge must have shape (B, H, W), got {tuple(edge.shape)}")
    paths = path_points(radius)
    rf = radius - 1
    height, width = edge.shape[-2:]
    # Paths run down (dy >= 0) and sideways by up to r - 1: pad below and on both sides.
    padded = F.pad(edge, (rf, rf, 0, rf), value=1.0)

    def shifted(y: int, x: int) -> torch.Tensor:
        return padded[:, y : y + height, rf + x : rf + x + width]

    out = []
    for points in paths:
        peak = shifted(*points[0])
        for y, x in points[1:]:
            peak = torch.maximum(peak, shifted(y, x))
        out.append(1 - peak)
    return torch.stack(out, dim=1)


def propagate_to_edge(
    x: torch.Tensor, edge: torch.Tensor, radius: int = 5, beta: float = 10, exp_times: int = 8
) -> torch.Tensor:
    """IRN's `propagate_to_edge` (indexing.py) without the N x N matrix.

    Args:
        x: (C, H, W) CAMs at the boundary map's resolution (IRN: stride 4).
        edge: (H, W) or (1, H, W) boundary probabilities in [0, 1].
        radius: neighbourhood radius of the pairs (IRN: 5).
        beta: exponent of the affinities (IRN: 10); > 0.
        exp_times: IRN's number of squarings; the walk takes 2 ** exp_times steps; >= 0.

    Returns:
        (C, 1, H, W): vec(x * (1 - edge)) T^(2^exp_times) per channel, T = A^beta / column
        sums over every pair inside the map, A from `path_affinity` with unit diagonal; IRN's
        result (in x's and edge's promoted dtype, on their device).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    _check_edge(edge)
    if isinstance(exp_times, bool) or not isinstance(exp_times, int):
        raise TypeError(f"exp_times must be an int, got {type(exp_times).__name__}")
    if exp_times < 0:
        raise ValueError(f"exp_times must be >= 0 (2 ** exp_times walk steps), got {exp_times}")
    if x.dim() != 3:
        raise ValueError(f"x must have shape (C, H, W), got {tuple(x.shape)}")
    if edge.dim() == 3 and edge.shape[0] == 1:
        edge = edge[0]
    if edge.dim() != 2 or edge.shape != x.shape[-2:]:
        raise ValueError(
            f"edge must have shape (H, W) or (1, H, W) with x's map size {tuple(x.shape[-2:])}, "
            f"got {tuple(edge.shape)}"
        )
    if x.device != edge.device:
        raise ValueError(f"x is on {x.device} but edge is on {edge.device}: move them together")
    dtype = torch.promote_types(x.dtype, edge.dtype)
    x, edge = x.to(dtype), edge.to(dtype)
    with torch.no_grad():
        aff = path_affinity(edge[None], radius)
        walked = random_walk((x * (1 - edge))[None], aff, beta, 2**exp_times, radius, region="full")
    return walked[0].unsqueeze(1)
