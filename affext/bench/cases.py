"""The measured cases: affext and each reference on the same inputs (docs/performance.md).

A *case* is a named builder that, given a device and its parameters, prepares inputs and
returns a zero-argument callable doing the measured work. `@case("name")` registers one, with
an estimate of its peak extra bytes (so that `affext bench` can skip a size that cannot fit
before trying it) and how its time grows with the map's area N. `affext bench` and the
pytest benchmarks (benchmarks/) build and time the same cases through `build`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..neighborhood import neighborhood_offsets
from ..ops.affinity import pairwise_affinity
from ..ops.pair_loss import pair_loss
from ..ops.par import DILATIONS, pixel_adaptive_refine
from ..ops.random_walk import random_walk
from ..reference.affinity import psa_affinity
from ..reference.pair_loss import psa_affinity_labels, psa_pair_loss
from ..reference.par import par_reference
from ..reference.random_walk import psa_dense_random_walk, torch_sparse_random_walk

# the dCRF inputs' names, importable from here as before crf_inputs.py held them
from .crf_inputs import (  # noqa: F401
    CRF_SOURCES,
    crf_batch,
    crf_photo,
    crf_scores,
    crf_texture,
    dense_crf_inputs,
)

Work = Callable[[], object]
CASES: dict[str, Callable[..., Work]] = {}


@dataclass(frozen=True)
class CaseInfo:
    """What is known of a case before running it.

    peak_bytes(**params): estimated peak extra bytes of one call (None: not estimated).
    time_exponent: time grows about as N ** time_exponent with the map's area N = H * W
    (1 for the stencil kernels, 3 for psa's dense N x N matrix products).
    unavailable(): why the case cannot run in this installation (an op not built, a library
    not installed), or None; None in place of the function: always available.
    """

    peak_bytes: Callable[..., float] | None = None
    time_exponent: float = 1.0
    unavailable: Callable[[], str | None] | None = None


CASE_INFO: dict[str, CaseInfo] = {}


def case(
    name: str,
    *,
    peak_bytes: Callable[..., float] | None = None,
    time_exponent: float = 1.0,
    unavailable: Callable[[], str | None] | None = None,
):
    """Register a case builder: builder(device, **params) -> zero-argument callable."""

    def register(builder):
        CASES[name] = builder
        CASE_INFO[name] = CaseInfo(peak_bytes, time_exponent, unavailable)
        return builder

    return register


def build(name: str, device: str = "cpu", **params) -> Work:
    """The measured callable of case `name` on `device`, its inputs prepared."""
    if name not in CASES:
        raise KeyError(f"unknown case {name!r}; known: {sorted(CASES)}")
    return CASES[name](torch.device(device), **params)


def unavailable_reason(name: str) -> str | None:
    """Why case `name` cannot run in this installation, or None (CaseInfo.unavailable)."""
    info = CASE_INFO.get(name)
    return info.unavailable() if info is not None and info.unavailable is not None else None


def estimate_peak_bytes(name: str, **params) -> int | None:
    """The registered estimate of a case's peak extra bytes with these parameters, if any."""
    info = CASE_INFO.get(name)
    if info is None or info.peak_bytes is None:
        return None
    return int(info.peak_bytes(**params))


FLOAT32_BYTES = 4


def _features(
    device: torch.device, batch: int, channels: int, size: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    feat = torch.randn(batch, channels, size, size, generator=gen, dtype=dtype)
    return feat.to(device).requires_grad_()


def _affinity_case(forward, dtype: torch.dtype = torch.float32):
    def builder(
        device: torch.device, batch: int = 1, channels: int = 448, size: int = 56, radius: int = 5
    ):
        feat = _features(device, batch, channels, size, dtype)

        def work():
            feat.grad = None
            forward(feat, radius).sum().backward()

        return work

    return builder


def _affinity_affext_bytes(
    batch: int = 1, channels: int = 448, size: int = 56, radius: int = 5
) -> float:
    # The (B, K, H, W) output and its gradient, and the features' gradient.
    k = len(neighborhood_offsets(radius))
    return FLOAT32_BYTES * batch * (2 * k + channels) * size * size


def _affinity_dense_bytes(
    batch: int = 1, channels: int = 448, size: int = 56, radius: int = 5
) -> float:
    # About four (B, C, K, n_from) tensors: the gathered "to" features, their difference and
    # its absolute value, and a gradient of that size in the backward (measured: 4.1 at B=1).
    k = len(neighborhood_offsets(radius))
    n_from = (size - radius + 1) * (size - 2 * radius + 2)
    return 4 * FLOAT32_BYTES * batch * channels * k * n_from


# Forward + backward of the affinity, C=448 on a 56x56 map (a 448 crop at stride 8).
case("affinity/affext", peak_bytes=_affinity_affext_bytes)(_affinity_case(pairwise_affinity))
case("affinity/psa-dense", peak_bytes=_affinity_dense_bytes)(_affinity_case(psa_affinity))
# bfloat16 features (CUDA kernels only): at least as fast as float32 is the target; the
# float32 estimate bounds its memory.
case("affinity/affext-bf16", peak_bytes=_affinity_affext_bytes)(
    _affinity_case(pairwise_affinity, torch.bfloat16)
)


# --- Balanced pair loss (docs/method.md §4), batch 8, 56x56. ---------------------------
def _label_map(device: torch.device, batch: int, size: int, block: int = 4) -> torch.Tensor:
    """(B, size, size) uint8 label map of blocks: background, two classes and 255 regions."""
    gen = torch.Generator().manual_seed(1)
    values = torch.tensor([0, 0, 0, 5, 5, 12, 255], dtype=torch.uint8)
    cells = (size + block - 1) // block
    coarse = values[torch.randint(0, len(values), (batch, cells, cells), generator=gen)]
    labels = coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :size, :size]
    return labels.contiguous().to(device)


def _affinities(device: torch.device, shape: tuple[int, ...]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    aff = 0.01 + 0.98 * torch.rand(shape, generator=gen)
    return aff.to(device).requires_grad_()


@case("pair_loss/affext")
def _pair_loss_affext(device: torch.device, batch: int = 8, size: int = 56, radius: int = 5):
    # (B, K, H, W) affinities as pairwise_affinity returns them, labels as a uint8 map.
    labels = _label_map(device, batch, size)
    aff = _affinities(device, (batch, len(neighborhood_offsets(radius)), size, size))

    def work():
        aff.grad = None
        pair_loss(aff, labels, radius).loss.backward()

    return work


@case("pair_loss/psa")
def _pair_loss_psa(device: torch.device, batch: int = 8, size: int = 56, radius: int = 5):
    # psa: (B, K, n_from) affinities as its AffinityNet returns them; the three float masks
    # built per image from the label map and stacked, then train_aff's loss.
    labels = _label_map(device, batch, size)
    n_from = (size - radius + 1) * (size - 2 * radius + 2)
    aff = _affinities(device, (batch, len(neighborhood_offsets(radius)), n_from))

    def work():
        aff.grad = None
        masks = psa_affinity_labels(labels, radius)
        psa_pair_loss(aff, *masks)["loss"].backward()

    return work


# --- Random walk (docs/method.md §5): psa's inference of one image, B = 1. ---------------
# psa's CAMs on a VOC image: background and the image's classes live, every absent class
# exactly zero (docs/method.md §5). Two classes is the common case.
_PSA_LIVE_CLASSES = (5, 12)


def _smooth_maps(gen: torch.Generator, channels: int, size: int) -> torch.Tensor:
    """(1, channels, size, size) smooth random maps: blobs a few pixels across, like CAMs."""
    coarse = torch.randn(1, channels, max(2, size // 8), max(2, size // 8), generator=gen)
    return torch.nn.functional.interpolate(
        coarse, size=(size, size), mode="bilinear", align_corners=False
    )


def walk_inputs(
    device: torch.device, size: int = 56, channels: int = 21, live: str = "psa", radius: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cam (1, C, H, W), aff (1, K, H, W)) for a walk on a size x size map.

    aff: pairwise_affinity of smooth 16-channel features (values spread over (0, 1], near 1
    inside blobs, as a trained AffinityNet gives). cam: non-negative smooth maps; with
    live="psa" only channel 0 (background) and two classes are non-zero, with live="all"
    every channel is.
    """
    if live not in ("psa", "all"):
        raise ValueError(f"live must be 'psa' or 'all', got {live!r}")
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        aff = pairwise_affinity(_smooth_maps(gen, 16, size), radius)
        cam = _smooth_maps(gen, channels, size).abs()
        if live == "psa":
            keep = torch.zeros(channels, dtype=torch.bool)
            keep[[0, *(c for c in _PSA_LIVE_CLASSES if c < channels)]] = True
            cam[:, ~keep] = 0
    return cam.to(device), aff.to(device)


def _walk_case(walk):
    """Builder of a walk with affext.random_walk's signature: (B, C, H, W) CAMs, (B, K, H, W)
    affinities in, (B, C, H, W) out; psa's region (psa's matrix exactly)."""

    def builder(
        device: torch.device,
        size: int = 56,
        channels: int = 21,
        live: str = "psa",
        beta: float = 8,
        iterations: int = 256,
        radius: int = 5,
    ):
        cam, aff = walk_inputs(device, size, channels, live, radius)
        return lambda: walk(cam, aff, beta=beta, iterations=iterations, radius=radius, region="psa")

    return builder


def _walk_affext_bytes(size: int = 56, channels: int = 21, radius: int = 5, **_) -> float:
    # O((K + C) N): the transition weights and a few (C, N) iterates.
    k = len(neighborhood_offsets(radius))
    return 4 * FLOAT32_BYTES * (k + channels) * size * size


def _walk_sparse_bytes(size: int = 56, channels: int = 21, radius: int = 5, **_) -> float:
    # A CSR matrix with 2K + 1 entries a column (4-byte values, 8-byte indices), the COO
    # triplets it is built from, and the (N, C) iterates.
    n = size * size
    nnz = (2 * len(neighborhood_offsets(radius)) + 1) * n
    return 3 * nnz * (FLOAT32_BYTES + 2 * 8) + 4 * FLOAT32_BYTES * channels * n


def _walk_dense_bytes(size: int = 56, **_) -> float:
    # Three N x N float32 matrices: A ** beta, the normalised T, and each squaring's product.
    n = size * size
    return 3 * FLOAT32_BYTES * n * n


# time_exponent: the dense walk squares an N x N matrix (N ** 3), the others are stencils.
case("random_walk/affext", peak_bytes=_walk_affext_bytes)(_walk_case(random_walk))
case("random_walk/psa-dense", peak_bytes=_walk_dense_bytes, time_exponent=3)(
    _walk_case(psa_dense_random_walk)
)
case("random_walk/torch-sparse", peak_bytes=_walk_sparse_bytes)(
    _walk_case(torch_sparse_random_walk)
)


# --- Dense CRF (docs/method.md §2): psa's settings, 10 iterations. -------------------------
def _dense_crf_op():
    from .. import ops

    return getattr(ops, "dense_crf", None)


def _affext_crf_unavailable() -> str | None:
    if _dense_crf_op() is None:
        return "affext.dense_crf unavailable (not in this build of affext)"
    return None


def _pydensecrf_unavailable() -> str | None:
    if importlib.util.find_spec("pydensecrf") is None:
        return "pydensecrf unavailable (pip install pydensecrf2)"
    return None


def _crf_bytes(height=375, width=500, labels=3, batch=1, pair=False, **_) -> float:
    # The marginals and two message buffers per label, and a lattice of (d + 1) = 6
    # vertices a pixel with n values each (bilateral) and 3 (Gaussian), in float32.
    images = 2 if pair else batch
    return FLOAT32_BYTES * images * height * width * labels * (3 + 2 * (6 + 3))


def _crf_case(prepare):
    """Builder of a dCRF case: prepare(device, images (B, H, W, 3), scores (B, n, H, W),
    pair, iterations) -> work, on the inputs of crf_batch."""

    def builder(device: torch.device, iterations: int = 10, **params):
        # params: crf_batch's (height, width, labels, batch, pair, kind)
        images, scores = crf_batch(**params)
        return prepare(device, images, scores, params.get("pair", False), iterations)

    return builder


# --- PAR (docs/method.md §10): AFA / ToCo's refinement of CAM probabilities by the images. ---
def par_inputs(
    device: torch.device, batch: int = 2, channels: int = 4, size: int = 224, live: str = "all"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(imgs (B, 3, H, W) in [0, 1], masks (B, C, H, W) softmax probabilities): smooth
    blobs, as de-normalised images and CAMs (background + classes) are. live="toco": as
    ToCo's refine_cams_with_bkg_v2 passes them, groups of 21 channels (one per background
    threshold) of which background and two classes are live, the others exactly zero."""
    if live not in ("all", "toco"):
        raise ValueError(f"live must be 'all' or 'toco', got {live!r}")
    gen = torch.Generator().manual_seed(4)
    imgs = torch.cat([_smooth_maps(gen, 3, size) for _ in range(batch)]).sigmoid()
    masks = torch.cat([_smooth_maps(gen, channels, size) for _ in range(batch)]).softmax(1)
    if live == "toco":
        keep = torch.tensor([c % 21 in (0, *_PSA_LIVE_CLASSES) for c in range(channels)])
        masks[:, ~keep] = 0
    return imgs.to(device), masks.to(device)


def _par_case(refine):
    """Builder of PAR with affext.pixel_adaptive_refine's signature, ToCo's dilations."""

    def builder(
        device: torch.device,
        batch: int = 2,
        channels: int = 4,
        size: int = 224,
        iterations: int = 10,
        live: str = "all",
    ):
        imgs, masks = par_inputs(device, batch, channels, size, live)
        return lambda: refine(imgs, masks, DILATIONS, iterations)

    return builder


def _affext_crf_work(device, images, scores, pair, iterations):
    # One call: (B, H, W, 3) images with their (B, n, H, W) stacks; la + ha as one (H, W, 3)
    # image for both stacks (its lattices built once); one image as (H, W, 3) and (n, H, W).
    crf = _dense_crf_op()
    if crf is None:
        raise RuntimeError(_affext_crf_unavailable())
    images = torch.from_numpy(images).to(device)
    scores = torch.from_numpy(scores).to(device)
    if pair:
        images = images[0]
    elif len(images) == 1:
        images, scores = images[0], scores[0]
    return lambda: crf(images, scores, iterations)


def _pydensecrf_work(device, images, scores, pair, iterations):
    # pydensecrf runs on the CPU whatever the device: one call an image (la + ha: two).
    from ..reference.dense_crf import pydensecrf_reference

    def work():
        for image, sc in zip(images, scores, strict=True):
            pydensecrf_reference(image, sc, iterations)

    return work


case("dense_crf/affext", peak_bytes=_crf_bytes, unavailable=_affext_crf_unavailable)(
    _crf_case(_affext_crf_work)
)
case("dense_crf/pydensecrf", peak_bytes=_crf_bytes, unavailable=_pydensecrf_unavailable)(
    _crf_case(_pydensecrf_work)
)


def _par_affext_bytes(batch: int = 2, channels: int = 4, size: int = 224, **_) -> float:
    # The (B, K, H, W) weights, two step buffers of the live channels and the result.
    k = 8 * len(DILATIONS)
    return FLOAT32_BYTES * batch * (k + 3 * channels) * size * size


def _par_dense_bytes(batch: int = 2, channels: int = 4, size: int = 224, **_) -> float:
    # A few (B, max(C, 3), K, H, W) tensors: the neighbours, their differences, the products.
    k = 8 * len(DILATIONS)
    return 4 * FLOAT32_BYTES * batch * max(channels, 3) * k * size * size


case("par/affext", peak_bytes=_par_affext_bytes)(_par_case(pixel_adaptive_refine))
case("par/afa-toco", peak_bytes=_par_dense_bytes)(_par_case(par_reference))
