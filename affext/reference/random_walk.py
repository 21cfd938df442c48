"""The random walk as psa computes it (dense N x N), and as a careful user would with torch's
sparse CSR matrices (docs/method.md §5, docs/performance.md)."""

from __future__ import annotations

import warnings

import torch

from ..neighborhood import neighborhood_offsets, psa_layout
from .affinity import psa_pair_indices


def _psa_pairs(
    height: int, width: int, radius: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, diag): the flat "from" and "to" pixel of every pair in psa's (K, n_from)
    order, and every pixel (the unit diagonal)."""
    ind_from, ind_to = psa_pair_indices(height, width, radius, device)
    rows = ind_from.repeat(ind_to.shape[0])
    cols = ind_to.reshape(-1)
    return rows, cols, torch.arange(height * width, device=device)


def psa_affinity_matrix(
    aff_psa: torch.Tensor, height: int, width: int, radius: int = 5
) -> torch.Tensor:
    """psa's dense A (N x N) of one image from its (K, n_from) affinities: symmetric, unit
    diagonal, built through a sparse COO tensor turned dense, as psa does."""
    n = height * width
    rows, cols, diag = _psa_pairs(height, width, radius, aff_psa.device)
    values = aff_psa.reshape(-1)
    indices = torch.cat(
        [torch.stack([rows, cols]), torch.stack([diag, diag]), torch.stack([cols, rows])], dim=1
    )
    data = torch.cat([values, torch.ones(n, dtype=values.dtype, device=values.device), values])
    return torch.sparse_coo_tensor(indices, data, (n, n), check_invariants=False).to_dense()


def psa_dense_walk(
    cam: torch.Tensor,
    aff_psa: torch.Tensor,
    height: int,
    width: int,
    beta: float = 8,
    logt: int = 8,
    radius: int = 5,
) -> torch.Tensor:
    """psa's infer_aff: (C, N) CAM vector times T^(2^logt), T = A^beta / column sums, by
    squaring T logt times. cam: (C, H, W); aff_psa: (K, n_from). Returns (C, H, W)."""
    trans = psa_affinity_matrix(aff_psa, height, width, radius).pow(beta)
    trans = trans / trans.sum(dim=0, keepdim=True)
    for _ in range(logt):
        trans = trans @ trans
    return (cam.reshape(cam.shape[0], -1) @ trans).reshape(cam.shape)


def dense_transition(
    aff: torch.Tensor, radius: int = 5, region: str = "full", beta: float = 8
) -> torch.Tensor:
    """T = A^beta D^-1 (N x N) of one image from (K, H, W) affinities, for either region,
    by an explicit loop over the pairs (slow; for tests on small maps)."""
    k_count, h, w = aff.shape
    n = h * w
    a = torch.eye(n, dtype=aff.dtype, device=aff.device)
    rf = radius - 1
    for k, (dy, dx) in enumerate(neighborhood_offsets(radius)):
        for y in range(h):
            for x in range(w):
                qy, qx = y + dy, x + dx
                if not (0 <= qy < h and 0 <= qx < w):
                    continue
                if region == "psa" and not (y < h - rf and rf <= x < w - rf):
                    continue
                a[y * w + x, qy * w + qx] = a[qy * w + qx, y * w + x] = aff[k, y, x]
    a = a.pow(beta)
    return a / a.sum(dim=0, keepdim=True)


def torch_sparse_transition(
    aff_psa: torch.Tensor, height: int, width: int, radius: int = 5, beta: float = 8
) -> torch.Tensor:
    """T^T = (A^beta D^-1)^T as a torch CSR matrix from psa-layout affinities (K, n_from), so
    that one step is v' = (T^T v^T)^T with a sparse-dense product."""
    n = height * width
    rows, cols, diag = _psa_pairs(height, width, radius, aff_psa.device)
    w = aff_psa.reshape(-1).pow(beta)
    r = torch.cat([rows, diag, cols])
    c = torch.cat([cols, diag, rows])
    v = torch.cat([w, torch.ones(n, dtype=w.dtype, device=w.device), w])
    colsum = torch.zeros(n, dtype=w.dtype, device=w.device).index_add_(0, c, v)
    # (T^T)[q, p] = A^beta[p, q] / d_q
    coo = torch.sparse_coo_tensor(
        torch.stack([c, r]), v / colsum[c], (n, n), check_invariants=False
    )
    with warnings.catch_warnings():  # torch calls its CSR support beta
        warnings.simplefilter("ignore", UserWarning)
        return coo.coalesce().to_sparse_csr()


def torch_sparse_walk(
    cam: torch.Tensor,
    aff_psa: torch.Tensor,
    height: int,
    width: int,
    beta: float = 8,
    iterations: int = 256,
    radius: int = 5,
) -> torch.Tensor:
    """The walk with torch's CSR sparse-dense product applied `iterations` times.
    cam: (C, H, W); aff_psa: (K, n_from). Returns (C, H, W)."""
    trans_t = torch_sparse_transition(aff_psa, height, width, radius, beta)
    v = cam.reshape(cam.shape[0], -1).t().contiguous()
    for _ in range(iterations):
        v = trans_t @ v
    return v.t().reshape(cam.shape)


def _per_image(
    walk_one, cam: torch.Tensor, aff: torch.Tensor, radius: int, region: str
) -> torch.Tensor:
    if region != "psa":
        raise ValueError(f"the references build psa's matrix only (region 'psa'), got {region!r}")
    h, w = cam.shape[-2:]
    aff_psa = psa_layout(aff, radius)
    return torch.stack([walk_one(cam[i], aff_psa[i], h, w) for i in range(cam.shape[0])])


def psa_dense_random_walk(
    cam: torch.Tensor,
    aff: torch.Tensor,
    beta: float = 8,
    iterations: int = 256,
    radius: int = 5,
    region: str = "psa",
) -> torch.Tensor:
    """psa_dense_walk with affext.random_walk's signature: (B, C, H, W) CAMs and (B, K, H, W)
    affinities in. iterations must be a power of two (psa squares T log2(t) times)."""
    logt = iterations.bit_length() - 1
    if iterations < 1 or 1 << logt != iterations:
        raise ValueError(f"psa's dense walk needs a power-of-two iterations, got {iterations}")
    return _per_image(
        lambda c, a, h, w: psa_dense_walk(c, a, h, w, beta, logt, radius), cam, aff, radius, region
    )


def torch_sparse_random_walk(
    cam: torch.Tensor,
    aff: torch.Tensor,
    beta: float = 8,
    iterations: int = 256,
    radius: int = 5,
    region: str = "psa",
) -> torch.Tensor:
    """torch_sparse_walk with affext.random_walk's signature."""
    return _per_image(
        lambda c, a, h, w: torch_sparse_walk(c, a, h, w, beta, iterations, radius),
        cam,
        aff,
        radius,
        region,
    )
