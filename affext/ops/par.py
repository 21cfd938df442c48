"""PAR, the pixel-adaptive refinement of AFA and ToCo, as a stencil (docs/method.md §10)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .. import _extension  # noqa: F401  (registers torch.ops.affext)
from ._fake_checks import check_agree, check_dim, check_floating

_weights_op = torch.ops.affext.par_weights
_refine_op = torch.ops.affext.par_refine
_backward_op = torch.ops.affext.par_refine_backward

DILATIONS = (1, 2, 4, 8, 12, 24)
MAX_DILATIONS = 16  # csrc/par/par.h kParMaxDilations
MAX_DILATION = 1 << 20  # csrc/par/par.h kParMaxDilation
RING = 8
NO_IMGS_GRADIENT = (
    "pixel_adaptive_refine has no gradient with respect to imgs (PAR's image affinity); "
    "pass imgs.detach() (AFA and ToCo refine with images that need none), or keep masks as "
    "the only input that requires grad"
)


def check_dilations(dilations: Sequence[int]) -> list[int]:
    """The dilations as a list of ints, or a ValueError / TypeError naming them."""
    if isinstance(dilations, (int, torch.Tensor)) or not isinstance(dilations, Sequence):
        raise TypeError(f"dilations must be a sequence of ints, got {dilations!r}")
    out = []
    for d in dilations:
        if isinstance(d, bool) or not isinstance(d, int):
            raise TypeError(f"dilations must be a sequence of ints, got {list(dilations)!r}")
        out.append(int(d))
    if not 1 <= len(out) <= MAX_DILATIONS or any(not 1 <= d <= MAX_DILATION for d in out):
        raise ValueError(
            f"dilations must hold 1 to {MAX_DILATIONS} positive integers (at most "
            f"{MAX_DILATION}), got {out}"
        )
    return out


def check_num_iter(num_iter: int) -> int:
    if isinstance(num_iter, bool) or not isinstance(num_iter, int):
        raise TypeError(f"num_iter must be an int, got {type(num_iter).__name__}")
    if num_iter < 1:
        raise ValueError(f"num_iter must be >= 1, got {num_iter}")
    return num_iter


def pixel_adaptive_refine(
    imgs: torch.Tensor,
    masks: torch.Tensor,
    dilations: Sequence[int] = DILATIONS,
    num_iter: int = 10,
    w1: float = 0.3,
    w2: float = 0.01,
) -> torch.Tensor:
    """Refine masks with PAR's pixel-adaptive affinity of the images (AFA, ToCo).

    Args:
        imgs: (B, 3, H, W) images (any number of colour channels), float32, float16,
            bfloat16 or float64.
        masks: (B, C, h, w) maps to refine (CAMs, their softmax); resized to (H, W) first
            (bilinear, align_corners=True) where (h, w) differs. Any floating dtype.
        dilations: the rings' dilations; each pixel has 8 neighbours per dilation (the 3x3
            ring scaled by it), replicate padding at the borders (a dilation may exceed the
            image). 1 to 16 positive ints, repeats allowed.
        num_iter: steps of the refinement, >= 1.
        w1: temperature of the colour and position affinities (> 0).
        w2: weight of the position term (>= 0).

    Returns:
        (B, C, H, W) in promote(imgs.dtype, masks.dtype) (as their module's product): num_iter
        times masks <- sum_k weights_k masks[neighbour k], with weights_k = softmax over the
        neighbours of -mean_c (|I_c[neighbour k] - I_c| / (std_c + 1e-8) / w1)^2, the unbiased
        std over the neighbours, plus w2 times the softmax of the ring distances in the same
        form (docs/method.md §10). Computed in float32 (float64 for float64 inputs) without
        PAR's (B, C, 8 len(dilations), H, W) tensors: memory for (B, 8 len(dilations), H, W)
        weights and two copies of the live channels. Channels zero everywhere stay zero and
        cost nothing. Deterministic: each value is summed in one fixed order (the same bits at
        any thread count on the CPU, on every run on CUDA, where the compiler's fused
        multiply-adds make the last bits differ from the CPU's); on CUDA no host
        synchronisation, so it can be captured in a CUDA graph. Values are not checked: NaN
        and Inf propagate as in their module.

    Differentiable with respect to masks (the op is linear in them: the backward is the
    adjoint stencil, and so on for higher orders). Not with respect to imgs: a backward that
    would need that gradient raises a RuntimeError rather than drop it.

    Raises:
        ValueError: shapes that do not agree, tensors on different devices, dilations or
            num_iter out of range, w1 <= 0 or w2 < 0.
        TypeError: non-tensor or non-floating inputs, non-int dilations or num_iter.
    """
    for name, t in (("imgs", imgs), ("masks", masks)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(t.shape)}")
    if imgs.device != masks.device:
        raise ValueError(f"imgs is on {imgs.device} but masks is on {masks.device}")
    if imgs.shape[0] != masks.shape[0]:
        raise ValueError(
            f"imgs {tuple(imgs.shape)} and masks {tuple(masks.shape)} must have the same batch"
        )
    dilations = check_dilations(dilations)
    num_iter = check_num_iter(num_iter)
    w1, w2 = float(w1), float(w2)
    if not (w1 > 0 and w1 < float("inf")) or not (w2 >= 0 and w2 < float("inf")):
        raise ValueError(f"w1 must be > 0 and w2 >= 0 (both finite), got w1={w1}, w2={w2}")
    if masks.shape[-2:] != imgs.shape[-2:]:
        masks = F.interpolate(masks, size=imgs.shape[-2:], mode="bilinear", align_corners=True)
    masks = masks.to(torch.promote_types(imgs.dtype, masks.dtype))
    weights = par_weights(imgs, dilations, w1, w2)
    return par_refine(masks, weights, dilations, num_iter)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype PAR's weights and steps use for inputs of `dtype` (csrc/par/par.h)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def par_weights(
    imgs: torch.Tensor, dilations: Sequence[int] = DILATIONS, w1: float = 0.3, w2: float = 0.01
) -> torch.Tensor:
    """(B, 8 len(dilations), H, W) weights of PAR's neighbours from (B, 3, H, W) imgs, in
    acc_dtype(imgs.dtype); neighbour k = 8 i + j is ring position j (row by row, centre left
    out) of dilations[i]. Computed once, applied by par_refine any number of times."""
    args = (check_dilations(dilations), float(w1), float(w2))
    # The kernels' own checks raise RuntimeError (all the stable ABI carries): these raise
    # ValueError / TypeError with the same messages first (traced, the fake kernel runs them).
    if not torch.compiler.is_compiling():
        _check_weights(imgs, *args)
    return _weights_op(imgs, *args)


def par_refine(
    masks: torch.Tensor, weights: torch.Tensor, dilations: Sequence[int], num_iter: int
) -> torch.Tensor:
    """num_iter steps masks <- sum_k weights_k masks[neighbour k] of (B, C, H, W) masks with
    par_weights' (B, K, H, W) weights (cast to acc_dtype(masks.dtype)); (B, C, H, W) out in
    masks' dtype. Differentiable in masks."""
    weights = weights.to(acc_dtype(masks.dtype))
    dilations, num_iter = check_dilations(dilations), check_num_iter(num_iter)
    if not torch.compiler.is_compiling():  # as in par_weights
        _fake_refine("masks", masks, weights, dilations, num_iter)
    return _refine_op(masks, weights, dilations, num_iter)


# ---- fake kernels: the launchers' rules (csrc/par/par_args.cpp), for tracing ----------------
def _fake_dilations(dilations):
    torch._check_value(
        1 <= len(dilations) <= MAX_DILATIONS and all(1 <= d <= MAX_DILATION for d in dilations),
        lambda: (
            f"dilations must hold 1 to {MAX_DILATIONS} positive integers (at most "
            f"{MAX_DILATION}), got {dilations}"
        ),
    )
    return RING * len(dilations)


def _fake_pixels(name, t):
    torch._check_value(
        t.shape[2] * t.shape[3] < 2**31,
        lambda: f"{name} has more than 2^31 pixels per channel: {tuple(t.shape)}",
    )


def _check_weights(imgs, dilations, w1, w2):
    """par_weights' rules; returns the weights' shape."""
    check_dim("imgs", imgs, 4, "(B, 3, H, W)")
    check_floating("imgs", imgs)
    torch._check_value(
        imgs.shape[1] >= 1 and imgs.shape[2] >= 1 and imgs.shape[3] >= 1,
        lambda: f"imgs must have at least one channel and one pixel, got {imgs.shape}",
    )
    _fake_pixels("imgs", imgs)
    k = _fake_dilations(dilations)
    torch._check_value(
        math.isfinite(w1) and w1 > 0, lambda: f"w1 must be a positive number, got {w1}"
    )
    torch._check_value(math.isfinite(w2) and w2 >= 0, lambda: f"w2 must be a number >= 0, got {w2}")
    b, _, h, w = imgs.shape
    return (b, k, h, w)


@torch.library.register_fake("affext::par_weights")
def _(imgs, dilations, w1, w2):
    return imgs.new_empty(_check_weights(imgs, dilations, w1, w2), dtype=acc_dtype(imgs.dtype))


def _fake_refine(name, masks, weights, dilations, num_iter):
    check_dim(name, masks, 4, "(B, C, H, W)")
    check_dim("weights", weights, 4, "(B, K, H, W)")
    check_floating(name, masks)
    torch._check_value(num_iter >= 1, lambda: f"num_iter must be >= 1, got {num_iter}")
    k = _fake_dilations(dilations)
    torch._check_value(
        weights.shape[1] == k,
        lambda: f"weights has {weights.shape[1]} neighbours but dilations {dilations} have K = {k}",
    )
    check_agree(name, masks, "weights", weights)
    _fake_pixels(name, masks)
    torch._check_type(
        weights.dtype == acc_dtype(masks.dtype),
        lambda: (
            f"weights must be {acc_dtype(masks.dtype)} (the accumulation type of {name}'s "
            f"{masks.dtype}), got {weights.dtype}"
        ),
    )
    return torch.empty_like(masks, memory_format=torch.contiguous_format)


@torch.library.register_fake("affext::par_refine")
def _(masks, weights, dilations, num_iter):
    return _fake_refine("masks", masks, weights, dilations, num_iter)


@torch.library.register_fake("affext::par_refine_backward")
def _(grad, weights, dilations, num_iter):
    return _fake_refine("grad", grad, weights, dilations, num_iter)


# ---- autograd: linear in masks (and the adjoint linear in grad); no gradient in imgs --------
def _setup_refine(ctx, inputs, output):
    _, weights, dilations, num_iter = inputs
    ctx.save_for_backward(weights)
    ctx.dilations, ctx.num_iter = dilations, num_iter


def _refine_backward(ctx, grad):
    if ctx.needs_input_grad[1]:
        raise RuntimeError(NO_IMGS_GRADIENT)
    (weights,) = ctx.saved_tensors
    return _backward_op(grad.contiguous(), weights, ctx.dilations, ctx.num_iter), None, None, None


def _adjoint_backward(ctx, grad):
    if ctx.needs_input_grad[1]:
        raise RuntimeError(NO_IMGS_GRADIENT)
    (weights,) = ctx.saved_tensors
    return _refine_op(grad.contiguous(), weights, ctx.dilations, ctx.num_iter), None, None, None


def _weights_backward(ctx, grad):
    raise RuntimeError(NO_IMGS_GRADIENT)


torch.library.register_autograd("affext::par_refine", _refine_backward, setup_context=_setup_refine)
torch.library.register_autograd(
    "affext::par_refine_backward", _adjoint_backward, setup_context=_setup_refine
)
torch.library.register_autograd(
    "affext::par_weights", _weights_backward, setup_context=lambda ctx, inputs, output: None
)
