"""Pairwise L1 affinity over the half-disk neighbourhood (docs/method.md §3)."""

from __future__ import annotations

import torch

from .. import _extension  # noqa: F401  (registers torch.ops.affext)
from ..neighborhood import check_radius, neighborhood_offsets

_op = torch.ops.affext.pairwise_affinity
_backward_op = torch.ops.affext.pairwise_affinity_backward


def pairwise_affinity(feat: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """AffinityNet's pairwise affinity of every pixel with its half-disk neighbours.

    Args:
        feat: (B, C, H, W) features; float32 or float64 (on CUDA also float16 and bfloat16,
            accumulated in float32). Any strides.
        radius: neighbourhood radius (psa's gamma), 2..16; K = len(neighborhood_offsets(radius)).

    Returns:
        (B, K, H, W) tensor: out[b, k, y, x] = exp(-mean_c |feat[b, c, y, x] -
        feat[b, c, y + dy_k, x + dx_k]|), and 0 where that neighbour lies outside the map.
        `affext.psa_layout(out, radius)` gives psa's (B, K, n_from) tensor.

    Differentiable with respect to feat; the backward is deterministic. Neither pass builds
    the (B, C, K, H*W) difference tensor of the dense formulation.
    """
    if not isinstance(feat, torch.Tensor):
        raise TypeError(f"feat must be a torch.Tensor, got {type(feat).__name__}")
    return _op(feat, check_radius(radius))


def _check_feat(feat, radius):
    """The kernels' shape and dtype rules (affinity_args.cpp), for the fake kernels."""
    torch._check(feat.dim() == 4, lambda: f"feat must have shape (B, C, H, W), got {feat.shape}")
    torch._check(
        feat.dtype.is_floating_point,
        lambda: f"feat must be a floating-point tensor, got {feat.dtype}",
    )
    torch._check(feat.shape[1] > 0, lambda: "feat must have at least one channel")
    torch._check(
        feat.shape[2] >= radius and feat.shape[3] >= 2 * radius - 1,
        lambda: (
            f"feat is {feat.shape[2]}x{feat.shape[3]} but radius {radius} needs a map of "
            f"at least {radius}x{2 * radius - 1}"
        ),
    )
    b, _, h, w = feat.shape
    return (b, len(neighborhood_offsets(radius)), h, w)


@torch.library.register_fake("affext::pairwise_affinity")
def _(feat, radius):
    return feat.new_empty(_check_feat(feat, radius))


@torch.library.register_fake("affext::pairwise_affinity_backward")
def _(grad, feat, aff, radius):
    aff_shape = _check_feat(feat, radius)
    torch._check(
        tuple(grad.shape) == aff_shape and tuple(aff.shape) == aff_shape,
        lambda: (
            f"grad and aff must have shape (B, K, H, W) = {aff_shape}, got "
            f"{tuple(grad.shape)} and {tuple(aff.shape)}"
        ),
    )
    return torch.empty_like(feat, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    feat, radius = inputs
    ctx.save_for_backward(feat, output)
    ctx.radius = radius


def _backward(ctx, grad):
    feat, aff = ctx.saved_tensors
    return _backward_op(grad, feat, aff, ctx.radius), None


torch.library.register_autograd(
    "affext::pairwise_affinity", _backward, setup_context=_setup_context
)
