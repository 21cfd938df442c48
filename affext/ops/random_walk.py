"""The random walk of CAMs over AffinityNet's affinities, no N x N matrix (docs/method.md §5)."""

from __future__ import annotations

import time

import torch

from .. import _extension  # noqa: F401  (registers torch.ops.affext)
from ..neighborhood import check_radius, region_code
from ._errors import value_errors
from ._fake_checks import (
    check_agree,
    check_dim,
    check_floating,
    check_map_size,
    check_offsets,
)

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
        are accepted). Its dtype is walk_result_dtype(cam.dtype, aff.dtype): the promoted
        dtype, at least float32 (float16 and bfloat16, accepted on CUDA only, walk and return
        in float32). Deterministic: the same bits on every run and thread count. On CUDA the
        call synchronises with the host once, to raise on bad values (none under CUDA-graph
        capture, where bad values trip a device assert instead: a replay of a captured walk
        with bad values leaves the process's CUDA context unusable, so check the inputs of a
        captured graph before its replays). On the CPU a long walk runs
        as chunks of steps, each up to about half a second, so that Ctrl-C stops it between
        two of them; the result is the same bits as one kernel call.

    Raises:
        ValueError: shapes that do not agree, K not matching radius, beta <= 0,
            iterations < 1, affinities outside [0, 1] or not finite, CAMs not finite, a map
            smaller than radius x (2 radius - 1) with region "psa" (region "full" takes any
            size).
    """
    for name, t in (("cam", cam), ("aff", aff)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise TypeError(f"iterations must be an int, got {type(iterations).__name__}")
    args = (float(beta), iterations, check_radius(radius), region_code(region))
    compiling = torch.compiler.is_compiling()
    # The kernels' own checks raise RuntimeError (all the stable ABI carries): these raise
    # ValueError / TypeError with the same messages first (traced, the fake kernel runs them),
    # and the kernels' findings in the values come back as ValueError.
    if not compiling:
        _check_args(cam, aff, *args)
    with torch.no_grad(), value_errors(_KERNEL_VALUE_ERRORS):
        if cam.device.type == "cpu" and not compiling:
            return _walk_in_chunks(cam.detach(), aff.detach(), *args)
        return _op(cam.detach(), aff.detach(), *args)


# The beginnings of the kernels' ValueError messages (csrc/random_walk/*.cpp, *.cu): bad values,
# and the AFFEXT_WALK_* settings (a forced mode that does not fit included).
_KERNEL_VALUE_ERRORS = "aff contains |cam contains |AFFEXT_WALK_"


# The CPU walk's chunks: the first of FIRST_CHUNK steps (psa's whole walk), each next one sized
# from the last one's time to take about CHUNK_SECONDS (at most 8 times as many steps).
# On CUDA the walk stays one call: chunks would each add the call's host synchronisation.
FIRST_CHUNK = 256
CHUNK_SECONDS = 0.5


def _walk_in_chunks(cam, aff, beta, iterations, radius, region):
    """The walk as consecutive kernel calls, each continuing from the last one's result.

    Python acts on a signal (Ctrl-C's KeyboardInterrupt) only between two calls into the
    kernel, which holds no other state between steps than the CAM planes: each call rebuilds
    the same transition from aff and takes each step in the same fixed order
    (csrc/random_walk/random_walk.h), so the chunks give the same bits as one call. (A channel
    that turned exactly 0 everywhere would stay +0 where one call might keep a -0.)
    """
    steps, done = min(iterations, FIRST_CHUNK), 0
    while True:
        start = time.perf_counter()
        cam = _op(cam, aff, beta, steps, radius, region)
        done += steps
        if done == iterations:
            return cam
        rate = steps / max(time.perf_counter() - start, 1e-6)
        steps = min(iterations - done, 8 * steps, max(1, int(rate * CHUNK_SECONDS)))


def walk_result_dtype(cam_dtype: torch.dtype, aff_dtype: torch.dtype) -> torch.dtype:
    """The walk's output dtype: promote(cam, aff), at least float32 (as the kernels)."""
    return torch.promote_types(torch.promote_types(cam_dtype, aff_dtype), torch.float32)


def _check_args(cam, aff, beta, iterations, radius, region):
    """The rules of random_walk_args.cpp and the CPU launcher; returns the output dtype."""
    check_dim("cam", cam, 4, "(B, C, H, W)")
    check_dim("aff", aff, 4, "(B, K, H, W)")
    check_floating("cam", cam)
    check_floating("aff", aff)
    torch._check_value(beta > 0, lambda: f"beta must be > 0, got {beta}")
    torch._check_value(iterations >= 1, lambda: f"iterations must be >= 1, got {iterations}")
    check_offsets("aff", aff, radius)
    check_agree("cam", cam, "aff", aff)
    if region == region_code("psa"):  # the full region takes any map size
        check_map_size("aff", aff.shape[2], aff.shape[3], radius)
    dtype = walk_result_dtype(cam.dtype, aff.dtype)
    torch._check_type(  # half dtypes walk on CUDA only
        cam.device.type != "cpu" or dtype == torch.promote_types(cam.dtype, aff.dtype),
        lambda: (
            f"on the CPU cam and aff must be float32 or float64, got {cam.dtype} and {aff.dtype}"
        ),
    )
    return dtype


@torch.library.register_fake("affext::random_walk")
def _(cam, aff, beta, iterations, radius, region):
    return cam.new_empty(cam.shape, dtype=_check_args(cam, aff, beta, iterations, radius, region))
