"""The dense CRF of psa's affinity labels and rw_crf (docs/method.md §2), as one batched op on
the CPU or the GPU: pydensecrf's model on the permutohedral lattice, written in affext."""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import _extension  # noqa: F401  (registers torch.ops.affext)
from ._errors import value_errors
from ._fake_checks import check_dim, check_floating

_op = torch.ops.affext.dense_crf


def dense_crf(
    image: torch.Tensor | np.ndarray,
    scores: torch.Tensor | np.ndarray,
    iterations: int = 10,
    gaussian_sxy: float = 3.0,
    gaussian_compat: float = 3.0,
    bilateral_sxy: float = 80.0,
    bilateral_srgb: float = 13.0,
    bilateral_compat: float = 10.0,
    validate: bool = True,
) -> torch.Tensor | np.ndarray:
    """Mean-field marginals of a dense CRF with a Gaussian and a bilateral Potts term.

    The model and inference of pydensecrf's DenseCRF2D with addPairwiseGaussian(sxy,
    compat) and addPairwiseBilateral(sxy, srgb, image, compat) (diagonal kernels, symmetric
    normalisation) and its inference(iterations); the defaults are psa's.

    Args:
        image: (H, W, 3) or (B, H, W, 3) uint8 RGB. One (H, W, 3) image serves every stack of
            a (B, n, H, W) scores batch (psa's la and ha CRFs of one image): its lattices are
            built once.
        scores: (n, H, W) or (B, n, H, W) non-negative scores, one channel per label; the
            unary is -log(clip(score, 1e-5, 1)) as pydensecrf's unary_from_softmax makes it
            (scores are not normalised over labels, as psa passes them). Any floating dtype;
            computed in float32.
        iterations: mean-field iterations (>= 1).
        gaussian_sxy, gaussian_compat: the position-only term's scale (pixels) and weight.
        bilateral_sxy, bilateral_srgb, bilateral_compat: the position-and-colour term's scales
            (pixels, intensity levels) and weight.
        validate: check that scores are finite and >= 0 (on CUDA this costs one host
            synchronisation; False skips it, and a NaN then acts as a score of 1e-5).

    Returns:
        float32 marginals of scores' shape, each pixel's summing to 1 over the labels; a
        tensor on scores' device, or a numpy array when scores is one. Deterministic: the
        same bits on every run and for any thread count on one machine. No autograd.

    Raises:
        ValueError: shapes that do not agree (image and scores of other sizes, an image
            count that is neither 1 nor the stack count), iterations < 1, non-positive
            scales, NaN, infinite or negative scores.
        TypeError: an image that is not uint8, scores that are not floating point.
    """
    as_numpy = isinstance(scores, np.ndarray)
    image_t = _as_tensor("image", image)
    scores_t = _as_tensor("scores", scores)
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)):
        raise TypeError(f"iterations must be an int, got {type(iterations).__name__}")
    if isinstance(image, np.ndarray) and scores_t.device.type != "cpu":
        image_t = image_t.to(scores_t.device)  # a numpy image goes where the scores are
    single = scores_t.dim() == 3
    if single:
        if image_t.dim() != 3:
            raise ValueError(
                f"scores of shape (n, H, W) take an image of shape (H, W, 3), got "
                f"{tuple(image_t.shape)}"
            )
        scores_t = scores_t.unsqueeze(0)
    elif scores_t.dim() != 4:
        raise ValueError(
            f"scores must have shape (n, H, W) or (B, n, H, W), got {tuple(scores_t.shape)}"
        )
    if image_t.dim() == 3:
        image_t = image_t.unsqueeze(0)
    args = (
        int(iterations),
        float(gaussian_sxy),
        float(gaussian_compat),
        float(bilateral_sxy),
        float(bilateral_srgb),
        float(bilateral_compat),
    )
    # The kernels' own checks raise RuntimeError (all the stable ABI carries): these raise
    # ValueError / TypeError with the same messages first (traced, the fake kernel runs them),
    # and what the kernels find in the values or the lattice sizes comes back as ValueError.
    if not torch.compiler.is_compiling():
        _check_args(image_t, scores_t, *args)
    with torch.no_grad(), value_errors(_KERNEL_VALUE_ERRORS):
        out = _op(image_t.detach(), scores_t.detach(), *args, bool(validate))
    if single:
        out = out.squeeze(0)
    return out.numpy() if as_numpy else out


# The beginnings of the kernels' ValueError messages (csrc/dense_crf/dense_crf_args.cpp): bad
# scores, and settings whose lattice keys would not fit into 64 bits.
_KERNEL_VALUE_ERRORS = r"scores contain |a \d+x\d+ image with "


def _as_tensor(name: str, value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise TypeError(f"{name} must be a torch.Tensor or a numpy array, got {type(value).__name__}")


def _check_setting(name: str, value: float, positive: bool) -> None:
    """The fake kernel's check of a scale (finite and > 0) or a weight (finite), as the kernel's."""
    ok = math.isfinite(value) and (value > 0 or not positive)
    want = "a finite number > 0" if positive else "finite"
    torch._check_value(ok, lambda: f"{name} must be {want}, got {value}")


def _key_bits(scaled_max: list[float]) -> int:
    """The bits a lattice key's coordinate takes for features of these largest scaled values
    (the kernel's key_packing, apart: the bound on an elevated coordinate, its vertices and
    their neighbours), or 0 when the d coordinates do not fit into 64 bits."""
    d = len(scaled_max)
    inv_std = np.float32(math.sqrt(2.0 / 3.0) * (d + 1))  # the axis scales, in float as there
    bound = 0.0  # in the kernel's order: the scaled terms, then the vertices' margin
    for i, f in enumerate(scaled_max):
        scale = np.float32(1.0 / math.sqrt((i + 1) * (i + 2)) * float(inv_std))
        bound += (i + 1) * float(scale) * f
    bound += 2.0 * (d + 1) + 2.0
    bits = 2
    while float(1 << (bits - 1)) <= bound and bits < 63:
        bits += 1
    return bits if bits * d <= 64 else 0


def _check_key_bits(H, W, gaussian_sxy: float, bilateral_sxy: float, bilateral_srgb: float):
    """The fake kernel's check that both lattices' keys fit into 64 bits, as the kernel's (for
    sizes known at trace time; the kernel checks symbolic ones when it runs)."""
    if not (isinstance(H, int) and isinstance(W, int)):
        return
    with np.errstate(all="ignore"):  # float32 overflow and 0 / 0 as the kernel's (inf, nan)
        xmax, ymax = np.float32(max(W - 1, 0)), np.float32(max(H - 1, 0))
        g = [float(xmax / np.float32(gaussian_sxy)), float(ymax / np.float32(gaussian_sxy))]
        c = float(np.float32(255.0) / np.float32(bilateral_srgb))
        b = [float(xmax / np.float32(bilateral_sxy)), float(ymax / np.float32(bilateral_sxy))]
    torch._check_value(
        _key_bits(g) > 0,
        lambda: (
            f"a {H}x{W} image with gaussian_sxy {gaussian_sxy} spans more lattice cells "
            "than 64-bit keys hold"
        ),
    )
    torch._check_value(
        _key_bits([*b, c, c, c]) > 0,
        lambda: (
            f"a {H}x{W} image with bilateral_sxy {bilateral_sxy} and bilateral_srgb "
            f"{bilateral_srgb} spans more lattice cells than 64-bit keys hold: raise "
            "bilateral_sxy or bilateral_srgb"
        ),
    )


def _check_args(
    image,
    scores,
    iterations,
    gaussian_sxy,
    gaussian_compat,
    bilateral_sxy,
    bilateral_srgb,
    bilateral_compat,
):
    """The launchers' rules (csrc/dense_crf/dense_crf_args.cpp), with their messages."""
    check_dim("image", image, 4, "(B, H, W, 3) or (1, H, W, 3)")
    check_dim("scores", scores, 4, "(B, n, H, W)")
    torch._check_type(
        image.dtype == torch.uint8, lambda: f"image must be a uint8 RGB tensor, got {image.dtype}"
    )
    check_floating("scores", scores)
    torch._check_value(
        image.device == scores.device,
        lambda: f"image is on {image.device} but scores is on {scores.device}",
    )
    torch._check_value(
        image.shape[3] == 3,
        lambda: f"image must have 3 colour channels (RGB) last, got shape {list(image.shape)}",
    )
    torch._check_value(
        image.shape[0] == scores.shape[0] or image.shape[0] == 1,
        lambda: (
            f"image has {image.shape[0]} images but scores has {scores.shape[0]} stacks: give "
            "one image per stack, or one image for all of them"
        ),
    )
    torch._check_value(
        image.shape[1] == scores.shape[2] and image.shape[2] == scores.shape[3],
        lambda: (
            f"image is {image.shape[1]}x{image.shape[2]} but scores are {scores.shape[2]}x"
            f"{scores.shape[3]}: they must have the same height and width"
        ),
    )
    torch._check_value(
        scores.shape[1] >= 1,
        lambda: f"scores must have at least one label, got shape {list(scores.shape)}",
    )
    torch._check_value(iterations >= 1, lambda: f"iterations must be >= 1, got {iterations}")
    for name, value in (
        ("gaussian_sxy", gaussian_sxy),
        ("bilateral_sxy", bilateral_sxy),
        ("bilateral_srgb", bilateral_srgb),
    ):
        _check_setting(name, value, positive=True)
    _check_setting("gaussian_compat", gaussian_compat, positive=False)
    _check_setting("bilateral_compat", bilateral_compat, positive=False)
    torch._check_value(
        scores.shape[2] * scores.shape[3] <= 2**28,
        lambda: (
            f"scores are {scores.shape[2]}x{scores.shape[3]}: the dense CRF takes at most "
            "2^28 pixels per image"
        ),
    )
    _check_key_bits(scores.shape[2], scores.shape[3], gaussian_sxy, bilateral_sxy, bilateral_srgb)


@torch.library.register_fake("affext::dense_crf")
def _(
    image,
    scores,
    iterations,
    gaussian_sxy,
    gaussian_compat,
    bilateral_sxy,
    bilateral_srgb,
    bilateral_compat,
    validate,
):
    _check_args(
        image,
        scores,
        iterations,
        gaussian_sxy,
        gaussian_compat,
        bilateral_sxy,
        bilateral_srgb,
        bilateral_compat,
    )
    return scores.new_empty(scores.shape, dtype=torch.float32)
