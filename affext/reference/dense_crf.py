"""The dense CRF of psa's pseudo labels (docs/method.md §2), computed exactly: brute-force
Gaussian filtering over every pair of pixels, in float64, written apart from the kernels
(affext.dense_crf) and from pydensecrf, whose permutohedral lattice (Adams et al. 2010)
approximates the same filtering. For small images (the kernel is N x N, N = H * W: about
40x40 in full, larger in row chunks).

The model and its inference, as pydensecrf's DenseCRF2D runs them with psa's calls
(setUnaryEnergy(unary_from_softmax(scores)), addPairwiseGaussian(sxy, compat),
addPairwiseBilateral(sxy, srgb, rgbim, compat), inference(iterations); Krähenbühl & Koltun
2011, with the symmetric normalisation of their 2013 paper), read from pydensecrf's sources
(densecrf.cpp, pairwise.cpp, labelcompatibility.cpp, permutohedral.cpp, utils.py):

1. Unary, pixel i, label l (utils.unary_from_softmax, clip 1e-5, no scale):
       U[l, i] = -log(min(max(scores[l, i], 1e-5), 1))
   The scores are not normalised over labels (psa passes (1 - max CAM)^alpha and the CAMs as
   they are); a score above 1 is clipped to 1 (unary 0), one below 1e-5 to 1e-5.
2. Features of pixel i at column x, row y, colour (r, g, b) of the uint8 image:
       Gaussian kernel:  f_i = (x / gaussian_sxy, y / gaussian_sxy)
       bilateral kernel: f_i = (x / bilateral_sxy, y / bilateral_sxy,
                                r / bilateral_srgb, g / bilateral_srgb, b / bilateral_srgb)
   and each kernel is K[i, j] = exp(-|f_i - f_j|^2 / 2), the pixel itself included
   (K[i, i] = 1: the lattice's splat-blur-slice keeps a pixel's own value, and pydensecrf
   does not subtract it).
3. Symmetric normalisation (NORMALIZE_SYMMETRIC, pydensecrf's default): with the row sums
   s_i = sum_j K[i, j] (the lattice applied to ones, the pixel itself included),
       norm_i = 1 / sqrt(s_i + 1e-20),   Kn = diag(norm) K diag(norm).
   (A constant factor on K, such as the lattice's, cancels here.)
4. Potts compatibility with weight w (PottsCompatibility: the filtered Q times -w), diagonal
   kernel (DIAG_KERNEL, the features as given). A pairwise term's message to label l is
   -w (Kn Q)[l, i]: the energy it adds is its negative.
5. Mean field (DenseCRF::inference), Q of shape (n, N), softmax over labels (max-shifted):
       Q_0 = softmax(-U)
       Q_t+1 = softmax(-U + w_g (Kn_g Q_t) + w_b (Kn_b Q_t)),  t = 0 .. iterations - 1
   (Q_t's rows filtered along the pixels; w_g = gaussian_compat, w_b = bilateral_compat).
   Both kernels see the same Q_t (a Jacobi step, not one kernel after the other).
   The marginals returned are Q_iterations.
pydensecrf computes in float32 with the lattice's approximation of step 2; this reference in
float64 with the exact kernel. How far the two are apart (tests/test_dense_crf.py says what
was measured) bounds what a permutohedral implementation can be held to against this one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

UNARY_CLIP = 1e-5  # pydensecrf's unary_from_softmax clip
# Pixels up to which the normalised kernels are held as one N x N matrix (N^2 float64 each:
# 4096 pixels is 134 MB); beyond, the messages are computed in row chunks every iteration.
FULL_KERNEL_MAX_PIXELS = 4096
CHUNK_ROWS = 1024


def _as_float64(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be real numbers, got {t.dtype}")
    return t.detach().to(device="cpu", dtype=torch.float64)


def crf_features(image: torch.Tensor, sxy: float, srgb: float | None = None) -> torch.Tensor:
    """(N, 2) Gaussian features (x / sxy, y / sxy), or with srgb the (N, 5) bilateral ones
    (x / sxy, y / sxy, r / srgb, g / srgb, b / srgb), of an (H, W, 3) image, pixels row-major."""
    h, w = image.shape[:2]
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    pos = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1) / sxy
    if srgb is None:
        return pos
    rgb = image.reshape(-1, 3).to(torch.float64) / srgb
    return torch.cat([pos, rgb], dim=1)


def gaussian_kernel(feat: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
    """exp(-|f_i - f_j|^2 / 2) for the pixels i of `rows` (all by default) and every j:
    (len(rows), N) float64, the diagonal included."""
    a = feat if rows is None else feat[rows]
    sq = torch.zeros(a.shape[0], feat.shape[0], dtype=torch.float64)
    for d in range(feat.shape[1]):  # one feature at a time: (rows, N) memory, exact squares
        sq += (a[:, d, None] - feat[None, :, d]) ** 2
    return torch.exp(sq.mul_(-0.5))


def _row_ranges(n: int) -> list[slice]:
    return [slice(i, min(i + CHUNK_ROWS, n)) for i in range(0, n, CHUNK_ROWS)]


class _Kernel:
    """One normalised pairwise kernel Kn = diag(norm) K diag(norm), applied to (n, N)."""

    def __init__(self, feat: torch.Tensor):
        self.feat = feat
        self.full: torch.Tensor | None
        n = feat.shape[0]
        if n <= FULL_KERNEL_MAX_PIXELS:
            k = gaussian_kernel(feat)
            self.norm = 1.0 / torch.sqrt(k.sum(1) + 1e-20)
            self.full = self.norm[:, None] * k * self.norm[None, :]
        else:
            sums = torch.cat([gaussian_kernel(feat, r).sum(1) for r in _row_ranges(n)])
            self.norm = 1.0 / torch.sqrt(sums + 1e-20)
            self.full = None

    def apply(self, q: torch.Tensor) -> torch.Tensor:
        if self.full is not None:
            return q @ self.full  # Kn is symmetric
        scaled = q * self.norm
        out = torch.empty_like(q)
        for r in _row_ranges(self.feat.shape[0]):
            out[:, r] = (scaled @ gaussian_kernel(self.feat, r).T) * self.norm[r]
        return out


def dense_crf_reference(
    image,
    scores,
    iterations: int = 10,
    gaussian_sxy: float = 3.0,
    gaussian_compat: float = 3.0,
    bilateral_sxy: float = 80.0,
    bilateral_srgb: float = 13.0,
    bilateral_compat: float = 10.0,
) -> torch.Tensor:
    """Exact mean-field marginals of pydensecrf's model (this module's docstring, steps 1-5).

    Args:
        image: (H, W, 3) uint8 RGB, or (B, H, W, 3); a numpy array or a tensor.
        scores: (n, H, W) non-negative scores, or (B, n, H, W).
        iterations: mean-field steps (psa: 10); 0 gives softmax(-U).
        gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb, bilateral_compat:
            psa's settings by default.
    Returns:
        (n, H, W) (or (B, n, H, W)) float64 marginals, on the CPU.
    """
    img = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    sc = _as_float64(scores, "scores")
    if img.dim() == 4 and sc.dim() == 4 and img.shape[0] == sc.shape[0]:
        args = (iterations, gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb)
        return torch.stack(
            [dense_crf_reference(i, s, *args, bilateral_compat) for i, s in zip(img, sc)]
        )
    if img.dim() != 3 or img.shape[2] != 3 or img.dtype != torch.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {tuple(img.shape)} {img.dtype}")
    if sc.dim() != 3 or tuple(sc.shape[1:]) != tuple(img.shape[:2]):
        raise ValueError(
            f"scores must be (n, {img.shape[0]}, {img.shape[1]}), got {tuple(sc.shape)}"
        )
    n, h, w = sc.shape
    unary = -torch.log(sc.clamp(UNARY_CLIP, 1.0)).reshape(n, h * w)
    img = img.cpu()
    kernels = [
        (gaussian_compat, _Kernel(crf_features(img, gaussian_sxy))),
        (bilateral_compat, _Kernel(crf_features(img, bilateral_sxy, bilateral_srgb))),
    ]
    q = torch.softmax(-unary, dim=0)
    for _ in range(iterations):
        logits = -unary
        for compat, kernel in kernels:
            logits = logits + compat * kernel.apply(q)
        q = torch.softmax(logits, dim=0)
    return q.reshape(n, h, w)


def pydensecrf_reference(image, scores, iterations: int = 10, **settings: Any) -> np.ndarray:
    """pydensecrf with psa's calls (affext.stages.crf.crf_inference), with dense_crf_reference's
    arguments (settings: gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb,
    bilateral_compat; psa's by default): (n, H, W) float32 marginals of one (H, W, 3) uint8
    image, or (B, n, H, W) of a batch (one pydensecrf call an image). Needs pydensecrf2."""
    from ..stages.crf import CRFConfig, crf_inference

    cfg = CRFConfig(iterations=iterations, backend="pydensecrf", **settings)
    image = image.cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    scores = scores.cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    if image.ndim == 4:
        return np.stack([crf_inference(i, s, cfg) for i, s in zip(image, scores, strict=True)])
    return np.asarray(crf_inference(image, scores, cfg))
