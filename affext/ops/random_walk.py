"""Random walk of CAMs over AffinityNet's affinities, without the N x N matrix (method.md s5)."""

from __future__ import annotations

import torch

from .. import _extension  # noqa: F401  (registers torch.ops.affext)
from ..neighborhood import check_radius, region_code

_op = torch.ops.affext.random_walk


def random_walk(
    cam: torch.Tensor,
    aff: torch.Tensor,
    beta: float = 8.0,
    iterations: int = 256,
    radius: int = 5,
    region: str = "psa",
) -> torch.Tensor:
    """Propagate CAMs with psa's transition matrix, applied as a sparse stencil.

    Args:
        cam: (B, C, H, W) class maps, background first, at the affinity map's size.
        aff: (B, K, H, W) half-disk affinities in [0, 1] (affext.pairwise_affinity, or any other
            source such as boundary-derived affinities), K = len(neighborhood_offsets(radius)).
        beta: exponent of the affinities (psa: 8); > 0.
        iterations: number of transition steps t (psa's logt = 8 squarings is t = 256); >= 1.
        radius: neighbourhood radius the affinities were computed with.
        region: "psa" builds exactly psa's matrix (pairs whose first pixel lies in psa's
            from-region); "full" uses every pair inside the map.

    Returns:
        (B, C, H, W): vec(cam) T^iterations per image and channel, where A is symmetric with unit
        diagonal and A[p, q] = aff[k, p] for q = p + o_k, and T = A**beta / column sums.
        Memory is O(B (K + C) H W); channels that are zero everywhere stay zero and cost
        nothing. The result is detached: the walk has no autograd (inputs that require grad
        are accepted).

    Raises:
        ValueError: shapes that do not agree, K not matching radius, beta <= 0,
            iterations < 1, negative or NaN affinities, NaN CAMs.
    """
    for name, t in (("cam", cam), ("aff", aff)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise TypeError(f"iterations must be an int, got {type(iterations).__name__}")
    with torch.no_grad():
        return _op(
            cam.detach(),
            aff.detach(),
            float(beta),
            iterations,
            check_radius(radius),
            region_code(region),
        )


@torch.library.register_fake("affext::random_walk")
def _(cam, aff, beta, iterations, radius, region):
    return torch.empty_like(
        cam, dtype=torch.promote_types(cam.dtype, aff.dtype), memory_format=torch.contiguous_format
    )
