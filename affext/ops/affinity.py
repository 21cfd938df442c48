"""Pairwise L1 affinity over the half-disk neighbourhood (docs/method.md §3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _extension  # noqa: F401  (registers torch.ops.affext)
from ..neighborhood import check_radius, neighborhood_offsets
from ._fake_checks import check_cpu_dtype, check_dim, check_floating, check_map_size

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

    Differentiable with respect to feat, twice and more (torch.autograd.grad with
    create_graph=True): the first backward is a deterministic kernel; the second derivative
    follows the dense formulation's (d|x|/dx = sign(x), whose own derivative is 0) with one
    (B, C, H, W) temporary per offset. Neither kernel builds the (B, C, K, H*W) difference
    tensor of the dense formulation.
    """
    if not isinstance(feat, torch.Tensor):
        raise TypeError(f"feat must be a torch.Tensor, got {type(feat).__name__}")
    radius = check_radius(radius)
    # The kernel's own checks raise RuntimeError (all the stable ABI carries): these raise
    # ValueError / TypeError with the same messages first (traced, the fake kernel runs them).
    if not torch.compiler.is_compiling():
        _check_forward(feat, radius)
    return _op(feat, radius)


def _check_feat(feat, radius):
    """The kernels' shape and dtype rules (affinity_args.cpp), for the fake kernels."""
    check_dim("feat", feat, 4, "(B, C, H, W)")
    check_floating("feat", feat)
    torch._check_value(
        feat.shape[1] > 0, lambda: f"feat must have at least one channel, got {list(feat.shape)}"
    )
    check_map_size("feat", feat.shape[2], feat.shape[3], radius)
    b, _, h, w = feat.shape
    return (b, len(neighborhood_offsets(radius)), h, w)


def _check_forward(feat, radius):
    """The forward launchers' rules: _check_feat's, and float32 / float64 on the CPU."""
    shape = _check_feat(feat, radius)
    check_cpu_dtype("feat", feat)
    return shape


@torch.library.register_fake("affext::pairwise_affinity")
def _(feat, radius):
    return feat.new_empty(_check_forward(feat, radius))


@torch.library.register_fake("affext::pairwise_affinity_backward")
def _(grad, feat, aff, radius):
    aff_shape = _check_feat(feat, radius)
    torch._check_value(
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


def _l1_derivative(feat: torch.Tensor, tangent: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, K, H, W): the derivative of every pair's L1 sum sum_c |f_p,c - f_q,c| in the
    direction `tangent`, sum_c sign(f_p,c - f_q,c) (t_p,c - t_q,c); 0 for pairs outside the
    map. One offset at a time, in at least float32 (half inputs)."""
    dtype = torch.promote_types(feat.dtype, torch.float32)
    feat, tangent = feat.to(dtype), tangent.to(dtype)
    h, w = feat.shape[2], feat.shape[3]
    planes = []
    for dy, dx in neighborhood_offsets(radius):
        x0, x1 = max(0, -dx), min(w, w - dx)  # columns whose neighbour lies inside the map
        first = (slice(None), slice(None), slice(0, h - dy), slice(x0, x1))
        second = (slice(None), slice(None), slice(dy, h), slice(x0 + dx, x1 + dx))
        sign = torch.sign(feat[first] - feat[second])
        plane = (sign * (tangent[first] - tangent[second])).sum(1)
        planes.append(F.pad(plane, (x0, w - x1, 0, dy)))
    return torch.stack(planes, 1)


def _setup_backward_context(ctx, inputs, output):
    grad, feat, aff, radius = inputs
    ctx.save_for_backward(grad, feat, aff)
    ctx.radius = radius


def _backward_backward(ctx, grad_grad_feat):
    # The backward is grad_feat = sum over pairs of -w sign(f_p - f_q) at p (and + at q) with
    # w = grad * aff / C: linear in grad and in aff, piecewise constant in feat. Its
    # derivative in the direction grad_grad_feat is therefore -d l1 / C times aff (for grad)
    # and times grad (for aff); feat's part is 0, as the dense formulation's.
    grad, feat, aff = ctx.saved_tensors
    if grad_grad_feat is None:
        return None, None, None, None
    d_l1 = _l1_derivative(feat, grad_grad_feat, ctx.radius) / -feat.shape[1]
    grad_grad = (d_l1 * aff).to(grad.dtype) if ctx.needs_input_grad[0] else None
    grad_aff = (d_l1 * grad).to(aff.dtype) if ctx.needs_input_grad[2] else None
    return grad_grad, None, grad_aff, None


torch.library.register_autograd(
    "affext::pairwise_affinity_backward",
    _backward_backward,
    setup_context=_setup_backward_context,
)
