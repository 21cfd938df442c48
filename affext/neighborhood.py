"""The half-disk neighbourhood of AffinityNet and its pair regions (docs/method.md §3).

The C++ twin is csrc/common/neighborhood.h; tests/test_affinity.py ties the two together.
"""

from __future__ import annotations

from functools import cache

import torch

MIN_RADIUS = 2
MAX_RADIUS = 16
REGIONS = ("psa", "full")
_REGION_CODE = {"psa": 0, "full": 1}


def check_radius(radius: int) -> int:
    """Return radius as an int, or raise if it is not an integer in [2, 16]."""
    if isinstance(radius, bool) or not isinstance(radius, int):
        raise TypeError(f"radius must be an int, got {type(radius).__name__}")
    if not MIN_RADIUS <= radius <= MAX_RADIUS:
        raise ValueError(f"radius must be in [{MIN_RADIUS}, {MAX_RADIUS}], got {radius}")
    return radius


def region_code(region: str) -> int:
    """The kernels' integer code of a pair region name ("psa" or "full")."""
    try:
        return _REGION_CODE[region]
    except (KeyError, TypeError):
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}") from None


@cache
def neighborhood_offsets(radius: int = 5) -> tuple[tuple[int, int], ...]:
    """The K half-disk offsets (dy, dx) in psa's order; K = 34 for radius 5.

    (0, 1..r-1) first, then row by row dy = 1..r-1 the dx in -(r-1)..r-1 with
    dx^2 + dy^2 < r^2. With their negatives and (0, 0) they make the full disk.
    """
    check_radius(radius)
    rf = radius - 1
    offsets = [(0, dx) for dx in range(1, radius)]
    offsets += [
        (dy, dx)
        for dy in range(1, radius)
        for dx in range(-rf, radius)
        if dx * dx + dy * dy < radius * radius
    ]
    return tuple(offsets)


def from_region(height: int, width: int, radius: int = 5) -> tuple[slice, slice]:
    """psa's "from" region as (rows, columns) slices: rows [0, H-r+1), columns [r-1, W-r+1)."""
    rf = check_radius(radius) - 1
    if height < radius or width < 2 * radius - 1:
        raise ValueError(
            f"a {height}x{width} map is smaller than radius {radius} needs "
            f"({radius}x{2 * radius - 1})"
        )
    return slice(0, height - rf), slice(rf, width - rf)


def psa_layout(aff: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """psa's (B, K, n_from) view of a (B, K, H, W) affinity (or pair-label) tensor.

    Keeps the pairs whose first pixel lies in psa's from-region, offset-major, then from-pixels
    row-major: element for element what psa's AffinityNet returns.
    """
    if aff.dim() != 4:
        raise ValueError(f"aff must have shape (B, K, H, W), got {tuple(aff.shape)}")
    k = len(neighborhood_offsets(radius))
    if aff.shape[1] != k:
        raise ValueError(f"aff has {aff.shape[1]} offsets but radius {radius} has K = {k}")
    rows, cols = from_region(aff.shape[2], aff.shape[3], radius)
    return aff[:, :, rows, cols].flatten(2)
