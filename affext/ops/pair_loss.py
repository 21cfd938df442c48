"""AffinityNet's class-balanced pair loss, computed from the label map (docs/method.md §4)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch._subclasses.fake_tensor import is_fake

from .. import _extension  # noqa: F401  (registers torch.ops.affext)
from ..neighborhood import check_radius, neighborhood_offsets, psa_layout, region_code
from ._fake_checks import (
    check_cpu_dtype,
    check_dim,
    check_floating,
    check_integer,
    check_map_size,
    check_offsets,
)

_op = torch.ops.affext.pair_loss
_backward_op = torch.ops.affext.pair_loss_backward
_classes_op = torch.ops.affext.pair_classes

# Codes of torch.ops.affext.pair_classes (csrc/pair_loss/pair_loss.h, enum PairClass).
PAIR_BG, PAIR_FG, PAIR_NEG, PAIR_NONE = 0, 1, 2, 3


class PairLoss(NamedTuple):
    """The balanced pair loss and its parts (0-dim tensors).

    loss, bg_loss, fg_loss, neg_loss are in aff's dtype and differentiable with respect to
    aff; the counts are int64 numbers of pairs over the whole batch (without psa's 1e-5).
    """

    loss: torch.Tensor
    bg_loss: torch.Tensor
    fg_loss: torch.Tensor
    neg_loss: torch.Tensor
    bg_count: torch.Tensor
    fg_count: torch.Tensor
    neg_count: torch.Tensor


class AffinityLabels(NamedTuple):
    """psa's three float32 pair masks (1 where a pair belongs to the class, else 0)."""

    bg_pos: torch.Tensor
    fg_pos: torch.Tensor
    neg: torch.Tensor


def _check_tensors(**tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(
            "aff and labels must be on the same device, got "
            + ", ".join(f"{n} on {d}" for n, d in devices.items())
        )


def pair_loss(
    aff: torch.Tensor, labels: torch.Tensor, radius: int = 5, region: str = "psa"
) -> PairLoss:
    """AffinityNet's class-balanced loss over the pairs inside the radius, in one pass.

    Each pair (p, p + o_k) of the region is classified from the labels of its two pixels
    (section 4): bg_pos (both 0), fg_pos (the same class), neg (different, neither 255);
    pairs touching 255 are ignored. No (B, K, n) masks are built.

    Args:
        aff: (B, K, H, W) affinities from `affext.pairwise_affinity`, values in [0, 1];
            float32 or float64 (on CUDA also float16 and bfloat16). Any strides.
        labels: (B, H, W) integer label map on aff's device: 0 background, 1..254 classes,
            255 ignored. uint8 is used as is; other integer dtypes are range-checked (a
            device sync on CUDA) and converted once.
        radius: neighbourhood radius; aff must have K = len(neighborhood_offsets(radius)).
        region: "psa" counts only pairs whose first pixel lies in psa's from-region (the
            same pairs, hence the same loss, as psa's train_aff); "full" every pair whose
            two pixels lie inside the map.

    Returns:
        PairLoss(loss, bg_loss, fg_loss, neg_loss, bg_count, fg_count, neg_count), counts over
        the whole batch: loss = bg_loss/4 + fg_loss/4 + neg_loss/2 with
        bg_loss = -sum_bg log(a + 1e-5) / (bg_count + 1e-5), fg_loss likewise and
        neg_loss = -sum_neg log(1 + 1e-5 - a) / (neg_count + 1e-5). A class without pairs
        gives a part of 0. Differentiable with respect to aff (through any of the four
        losses, also twice and more: torch.autograd.grad with create_graph=True); the
        reductions are deterministic (fixed-order partial sums in float64).
        With uint8 labels neither pass synchronises with the host (a CUDA graph can hold
        them).
    """
    _check_tensors(aff=aff, labels=labels)
    radius, code = check_radius(radius), region_code(region)
    # The kernels' own checks raise RuntimeError (all the stable ABI carries): these raise
    # ValueError / TypeError with the same messages first (traced, the fake kernel runs them).
    if not torch.compiler.is_compiling():
        _check_pair_loss_args(aff, labels, radius, code)
        labels = _labels_in_range(labels)
    loss, bg_loss, fg_loss, neg_loss, counts = _op(aff, labels, radius, code)
    return PairLoss(loss, bg_loss, fg_loss, neg_loss, *counts.unbind())


def affinity_labels(labels: torch.Tensor, radius: int = 5, region: str = "psa") -> AffinityLabels:
    """psa's pair masks (bg_pos, fg_pos, neg) of a label map, as float32 tensors.

    Args:
        labels: (B, H, W) integer label map: 0 background, 1..254 classes, 255 ignored.
        radius: neighbourhood radius, K = len(neighborhood_offsets(radius)).
        region: "psa": each mask is (B, K, n_from) in psa's layout (offset-major, then the
            from-region row-major), element for element psa's ExtractAffinityLabelInRadius
            stacked over the batch. "full": each mask is (B, K, H, W), aligned with
            `affext.pairwise_affinity`'s output; a pair whose neighbour lies outside the map
            is 0 in all three.

    `pair_loss` computes the same classes without building these masks.
    """
    _check_tensors(labels=labels)
    radius, code = check_radius(radius), region_code(region)
    if not torch.compiler.is_compiling():  # as in pair_loss
        _check_labels(labels, radius, code)
        labels = _labels_in_range(labels)
    classes = _classes_op(labels, radius, code)
    if region == "psa":
        classes = psa_layout(classes, radius)
    return AffinityLabels(*((classes == c).float() for c in (PAIR_BG, PAIR_FG, PAIR_NEG)))


def _check_labels(labels, radius, region):
    """prepare_labels' shape and dtype rules (pair_loss_args.cpp), for the fake kernels."""
    check_dim("labels", labels, 3, "(B, H, W)")
    check_integer("labels", labels)
    if region == region_code("psa"):  # the full region has pairs on any map
        check_map_size("labels", labels.shape[1], labels.shape[2], radius)


def _labels_in_range(labels):
    """labels as uint8 after prepare_labels' range check (pair_loss_args.cpp), with its
    ValueError: other integer dtypes are checked (a device sync on CUDA) and converted here,
    once, so that the kernel gets uint8. Fake tensors (no values) pass unchanged."""
    if labels.dtype == torch.uint8 or is_fake(labels):
        return labels
    if labels.numel() > 0:
        lo, hi = (int(v) for v in torch.aminmax(labels))
        if lo < 0 or hi > 255:
            raise ValueError(
                "labels must lie in 0..255 (0 background, 1..254 classes, 255 ignored), got "
                f"values in [{lo}, {hi}]"
            )
    return labels.to(torch.uint8)


def _check_pair_loss_args(aff, labels, radius, region):
    """The kernels' shape and dtype rules (pair_loss_args.cpp), for the fake kernels."""
    check_dim("aff", aff, 4, "(B, K, H, W)")
    check_floating("aff", aff)
    _check_labels(labels, radius, region)
    check_offsets("aff", aff, radius)
    torch._check_value(
        aff.shape[0] == labels.shape[0]
        and aff.shape[2] == labels.shape[1]
        and aff.shape[3] == labels.shape[2],
        lambda: (
            f"aff (B, K, H, W) = {list(aff.shape)} and labels (B, H, W) = {list(labels.shape)} "
            "must agree in B, H and W"
        ),
    )
    check_cpu_dtype("aff", aff)


@torch.library.register_fake("affext::pair_loss")
def _(aff, labels, radius, region):
    _check_pair_loss_args(aff, labels, radius, region)
    parts = tuple(aff.new_empty(()) for _ in range(4))
    return (*parts, aff.new_empty((3,), dtype=torch.int64))


@torch.library.register_fake("affext::pair_loss_backward")
def _(grad_loss, grad_bg_loss, grad_fg_loss, grad_neg_loss, counts, aff, labels, radius, region):
    _check_pair_loss_args(aff, labels, radius, region)
    names = ("grad_loss", "grad_bg_loss", "grad_fg_loss", "grad_neg_loss")
    for name, grad in zip(names, (grad_loss, grad_bg_loss, grad_fg_loss, grad_neg_loss)):
        if grad is not None:
            shape = tuple(grad.shape)
            if grad.dim() != 0:
                raise ValueError(f"{name} must be a 0-dim tensor, got {shape}")
            check_floating(name, grad)
    torch._check_value(
        counts.shape == (3,) and counts.dtype == torch.int64,
        lambda: (
            f"counts must be the forward's (3,) int64 pair counts, got {counts.dtype} of "
            f"shape {tuple(counts.shape)}"
        ),
    )
    return torch.empty_like(aff, memory_format=torch.contiguous_format)


@torch.library.register_fake("affext::pair_classes")
def _(labels, radius, region):
    _check_labels(labels, radius, region)
    b, h, w = labels.shape
    return labels.new_empty((b, len(neighborhood_offsets(radius)), h, w), dtype=torch.uint8)


def _setup_context(ctx, inputs, output):
    aff, labels, radius, region = inputs
    counts = output[4]
    ctx.mark_non_differentiable(counts)
    # a loss that takes no part in the objective passes None to the kernel, not a zero tensor
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(aff, labels, counts)
    ctx.radius, ctx.region = radius, region


def _backward(ctx, grad_loss, grad_bg_loss, grad_fg_loss, grad_neg_loss, _grad_counts):
    aff, labels, counts = ctx.saved_tensors
    grads = (grad_loss, grad_bg_loss, grad_fg_loss, grad_neg_loss)
    if all(g is None for g in grads) or not ctx.needs_input_grad[0]:
        return None, None, None, None
    # The counts are piecewise constant in aff: only the sums carry a gradient.
    grad_aff = _backward_op(*grads, counts, aff, labels, ctx.radius, ctx.region)
    return grad_aff, None, None, None


torch.library.register_autograd("affext::pair_loss", _backward, setup_context=_setup_context)


def _setup_backward_context(ctx, inputs, output):
    *grads, counts, aff, labels, radius, region = inputs
    ctx.given = tuple(g is not None for g in grads)
    ctx.save_for_backward(*(g for g in grads if g is not None), counts, aff, labels)
    ctx.radius, ctx.region = radius, region


def _backward_backward(ctx, grad_grad_aff):
    # The backward is, per pair of class c, grad_aff = G_c / (n_c + 1e-5) * h(a) with
    # h = d pair_term / da (-1 / (a + 1e-5) for bg and fg pairs, 1 / (1 + 1e-5 - a) for neg
    # pairs, pair_loss.h) and G = (g_loss/4 + g_bg, g_loss/4 + g_fg, g_loss/2 + g_neg).
    # h' = h^2, so d grad_aff / da = grad_aff * h; each G_c gets sum_c(grad_grad * h) / n_c.
    *given_grads, counts, aff, labels = ctx.saved_tensors
    given = iter(given_grads)
    grads = [next(given) if g else None for g in ctx.given]
    if grad_grad_aff is None:
        return (None,) * 9
    classes = _classes_op(labels, ctx.radius, ctx.region).long()
    dtype = torch.promote_types(aff.dtype, torch.float32)
    a, gg = aff.to(dtype), grad_grad_aff.to(dtype)
    one = a.new_ones(())
    pos = torch.where(classes < PAIR_NEG, -one / (a + 1e-5), one / ((1.0 + 1e-5) - a))
    h = torch.where(classes < PAIR_NONE, pos, 0)
    inv_n = 1 / (counts.to(dtype) + 1e-5)
    g_loss, g_bg, g_fg, g_neg = (a.new_zeros(()) if g is None else g.to(dtype) for g in grads)
    class_grad = torch.stack([g_loss / 4 + g_bg, g_loss / 4 + g_fg, g_loss / 2 + g_neg])
    # class_grad / n per pair, with a zero slot for pairs of no class
    per_pair = torch.cat([class_grad * inv_n, a.new_zeros(1)])[classes]
    grad_aff = (gg * per_pair * h * h).to(aff.dtype) if ctx.needs_input_grad[5] else None
    weighted = gg * h
    sums = torch.stack([torch.where(classes == c, weighted, 0).sum() for c in range(3)]) * inv_n
    part_grads = (sums[0] / 4 + sums[1] / 4 + sums[2] / 2, sums[0], sums[1], sums[2])
    out = [
        p.to(g.dtype) if g is not None and ctx.needs_input_grad[i] else None
        for i, (p, g) in enumerate(zip(part_grads, grads))
    ]
    return (*out, None, grad_aff, None, None, None)


torch.library.register_autograd(
    "affext::pair_loss_backward", _backward_backward, setup_context=_setup_backward_context
)
