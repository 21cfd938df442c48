"""PAR as AFA and ToCo formulate it (docs/method.md §10): every neighbour of every pixel
materialised, a (B, C, 8 len(dilations), H, W) tensor per step. Written from the method, apart
from the kernels; the tests and the benchmark compare affext.pixel_adaptive_refine with it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# The 3x3 ring without its centre, row by row, as (dy, dx) multiples of the dilation.
RING = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def ring_neighbours(x: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, K, H, W): plane k = 8 i + j is x shifted to ring position j of
    dilations[i], the borders replicated: x padded by d on every side, its dilated 3x3
    patches unfolded (the im2col columns a dilated convolution builds), the centre dropped,
    and the dilations' planes concatenated."""
    b, c, h, w = x.shape
    ring = [3 * (1 + dy) + (1 + dx) for dy, dx in RING]  # patch positions, centre left out
    planes = []
    for d in dilations:
        padded = F.pad(x, (d, d, d, d), mode="replicate")
        patches = F.unfold(padded, kernel_size=3, dilation=d).view(b, c, 9, h, w)
        planes.append(patches[:, :, ring])
    return torch.cat(planes, 2)


def ring_distances(dilations: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """(K,) distance of each neighbour: d on the ring's axes, sqrt(2) d on its diagonals."""
    return torch.tensor(
        [d * (math.sqrt(2) if dy and dx else 1.0) for d in dilations for dy, dx in RING],
        dtype=dtype,
    )


def par_affinity(
    imgs: torch.Tensor, dilations: Sequence[int], w1: float = 0.3, w2: float = 0.01
) -> torch.Tensor:
    """(B, 1, K, H, W) weights: softmax over the neighbours of the colour affinity, plus w2
    times the softmax of the position term. As in their module, the centre pixels and the
    ring distances are repeated to full (B, ., K, H, W) tensors rather than broadcast, so that
    this baseline's memory is theirs."""
    b, _, h, w = imgs.shape
    nb = ring_neighbours(imgs, dilations)
    centre = imgs.unsqueeze(2).repeat(1, 1, nb.shape[2], 1, 1)
    spread = torch.std(nb, dim=2, keepdim=True)  # unbiased, per colour channel
    colour = -(((nb - centre).abs() / (spread + 1e-8) / w1) ** 2)
    colour = colour.mean(dim=1, keepdim=True)
    dist = ring_distances(dilations, torch.promote_types(imgs.dtype, torch.float32))
    dist = dist.to(imgs.device).view(1, 1, -1, 1, 1).repeat(b, 1, 1, h, w)
    position = -((dist / (torch.std(dist, dim=2, keepdim=True) + 1e-8) / w1) ** 2)
    return F.softmax(colour, dim=2) + w2 * F.softmax(position, dim=2)


def par_reference(
    imgs: torch.Tensor,
    masks: torch.Tensor,
    dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
    num_iter: int = 10,
    w1: float = 0.3,
    w2: float = 0.01,
) -> torch.Tensor:
    """(B, C, H, W): masks resized to the images (bilinear, align_corners=True), then num_iter
    times the sum over the neighbours of weight x neighbour's mask."""
    masks = F.interpolate(masks, size=imgs.shape[-2:], mode="bilinear", align_corners=True)
    aff = par_affinity(imgs, dilations, w1, w2)
    for _ in range(num_iter):
        masks = (ring_neighbours(masks, dilations) * aff).sum(2)
    return masks
