"""psa's dense affinity: index_select of "from" and "to" features and an explicit
(B, C, K, n_from) difference tensor (docs/method.md §3)."""

from __future__ import annotations

import torch


def psa_pair_indices(
    height: int, width: int, radius: int = 5, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat pixel indices of psa's pairs on a height x width map.

    Returns (ind_from (n_from,), ind_to (K, n_from)): the from-region, rows [0, H-r+1) and
    columns [r-1, W-r+1), row-major, and for each half-disk offset the index of its partner.
    """
    rf = radius - 1
    grid = torch.arange(height * width, device=device).reshape(height, width)
    crop_h, crop_w = height - rf, width - 2 * rf
    ind_from = grid[:crop_h, rf : rf + crop_w].reshape(-1)
    targets = [grid[0:crop_h, rf + dx : rf + dx + crop_w] for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-rf, radius):
            if dx * dx + dy * dy < radius * radius:
                targets.append(grid[dy : dy + crop_h, rf + dx : rf + dx + crop_w])
    ind_to = torch.stack([t.reshape(-1) for t in targets])
    return ind_from, ind_to


def psa_affinity(feat: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """psa's AffinityNet affinity of (B, C, H, W) features, in psa's (B, K, n_from) layout."""
    b, c, h, w = feat.shape
    ind_from, ind_to = psa_pair_indices(h, w, radius, feat.device)
    flat = feat.reshape(b, c, h * w)
    f_from = torch.index_select(flat, 2, ind_from).unsqueeze(2)
    f_to = torch.index_select(flat, 2, ind_to.reshape(-1)).reshape(b, c, ind_to.shape[0], -1)
    return torch.exp(-torch.mean(torch.abs(f_to - f_from), dim=1))
