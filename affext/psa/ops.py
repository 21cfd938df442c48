"""psa's tensors, element for element, computed with affext's kernels (docs/method.md §3-5).

psa keeps AffinityNet's affinities as a (B, K, n_from) tensor: offset-major, then the pixels of
its "from" region (rows [0, H-r+1), columns [r-1, W-r+1)) row-major. affext's kernels work on
(B, K, H, W) maps; `to_map` and `affext.psa_layout` convert between the two.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ..neighborhood import check_radius, from_region, neighborhood_offsets, psa_layout
from ..ops import PairLoss, pairwise_affinity
from ..ops import pair_loss as _fused_pair_loss
from ..ops import random_walk as _walk

# psa's 1e-5 inside the logarithms and the denominators of its loss (docs/method.md §4).
_EPS = 1e-5


def _tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def affinity(feat: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """psa's (B, K, n_from) affinity tensor of a (B, C, H, W) AffinityNet feature.

    Exactly what psa's resnet38_aff.Net.forward(x) returns (to_dense=False) after computing
    `feat` (its 448-channel f9 output): aff[b, k, i] = exp(-mean_c |f_i - f_(i + o_k)|) for the
    from-pixels i, through affext's fused kernel (no (B, C, K, n) difference tensor).
    Differentiable with respect to feat.
    """
    feat = _tensor("feat", feat)
    if feat.dim() != 4:
        raise ValueError(f"feat must have shape (B, C, H, W), got {tuple(feat.shape)}")
    return psa_layout(pairwise_affinity(feat, radius), radius)


def to_map(aff: torch.Tensor, height: int, width: int, radius: int = 5) -> torch.Tensor:
    """psa's (B, K, n_from) affinities as affext's (B, K, H, W) map (0 off psa's region).

    The inverse of `affext.psa_layout` on the from-region; differentiable. A (B, K, H, W)
    tensor is returned as it is (after a shape check).
    """
    aff = _tensor("aff", aff)
    k = len(neighborhood_offsets(radius))
    rows, cols = from_region(height, width, radius)
    hf, wf = rows.stop - rows.start, cols.stop - cols.start
    if aff.dim() == 4:
        if aff.shape[1:] != (k, height, width):
            raise ValueError(
                f"aff map has shape {tuple(aff.shape)}, expected (B, {k}, {height}, {width})"
            )
        return aff
    if aff.dim() != 3 or aff.shape[1] != k or aff.shape[2] != hf * wf:
        raise ValueError(
            f"aff has shape {tuple(aff.shape)}; psa's layout for a {height}x{width} map and "
            f"radius {radius} is (B, {k}, {hf * wf}) (or give the (B, {k}, {height}, {width}) map)"
        )
    rf = radius - 1
    return F.pad(aff.reshape(aff.shape[0], k, hf, wf), (rf, rf, 0, rf))


def _pair_indices(height: int, width: int, radius: int, device) -> tuple[torch.Tensor, ...]:
    """psa's from-pixel indices (n_from,) and to-pixel indices (K, n_from) of an H x W map."""
    rows, cols = from_region(height, width, radius)
    index = torch.arange(height * width, device=device).view(height, width)
    ind_from = index[rows, cols].reshape(-1)
    hf, wf = rows.stop - rows.start, cols.stop - cols.start
    ind_to = torch.stack(
        [
            index[dy : dy + hf, cols.start + dx : cols.start + dx + wf].reshape(-1)
            for dy, dx in neighborhood_offsets(radius)
        ]
    )
    return ind_from, ind_to


def dense_affinity_matrix(
    aff: torch.Tensor, height: int, width: int, radius: int = 5
) -> torch.Tensor:
    """psa's N x N affinity matrix (to_dense=True), built on aff's device.

    A[i, i] = 1, A[i, j] = A[j, i] = a_ij for every pair of psa's region, 0 elsewhere
    (docs/method.md §5). aff: one image's affinities, (1, K, n_from), (K, n_from) or
    (1, K, H, W). It takes N^2 memory: `affext.psa.random_walk` needs none of it.
    """
    aff = _tensor("aff", aff)
    radius = check_radius(radius)
    if aff.dim() == 2:
        aff = aff[None]
    if aff.shape[0] != 1:
        raise ValueError(
            f"the dense matrix is built for one image (as psa does), got a batch of {aff.shape[0]}"
        )
    if aff.dim() == 4:
        aff = psa_layout(to_map(aff, height, width, radius), radius)
    to_map(aff, height, width, radius)  # shape check
    n = height * width
    ind_from, ind_to = _pair_indices(height, width, radius, aff.device)
    ind_from = ind_from.expand_as(ind_to).reshape(-1)
    ind_to = ind_to.reshape(-1)
    values = aff.reshape(-1)
    mat = torch.eye(n, dtype=aff.dtype, device=aff.device)
    # pairs are distinct and never (i, i): plain (differentiable) scatters, no accumulation
    mat = mat.index_put((ind_from, ind_to), values)
    return mat.index_put((ind_to, ind_from), values)


def random_walk(
    cam: torch.Tensor,
    aff: torch.Tensor,
    beta: float = 8,
    logt: int = 8,
    radius: int = 5,
) -> torch.Tensor:
    """psa infer_aff's random walk without the N x N matrix (docs/method.md §5).

    Args:
        cam: the pooled CAMs as psa's infer_aff holds them before `view(21, -1)`: (C, h, w),
            or (B, C, h, w); background first.
        aff: the affinities of the same h x w map: psa's forward output (B, K, n_from) (B = 1
            for a (C, h, w) cam), or affext's (B, K, h, w) map.
        beta, logt: psa's --beta and --logt: T = A**beta / column sums, applied 2**logt times.
        radius: the neighbourhood radius (psa: 5).

    Returns:
        What psa's `torch.matmul(cam_vec, trans_mat)` gives after its logt squarings, shaped
        like cam, (C, h, w) or (B, C, h, w), on aff's device (cam is moved there, as psa moves
        its CAM vector to the GPU), in the promoted dtype of cam and aff, at least float32.
        No autograd.
    """
    cam, aff = _tensor("cam", cam), _tensor("aff", aff)
    if isinstance(logt, bool) or not isinstance(logt, int) or not 0 <= logt <= 30:
        raise ValueError(f"logt must be an int in [0, 30], got {logt!r}")
    single = cam.dim() == 3
    if single:
        cam = cam[None]
    if cam.dim() != 4:
        raise ValueError(f"cam must have shape (C, h, w) or (B, C, h, w), got {tuple(cam.shape)}")
    height, width = cam.shape[-2:]
    aff_map = to_map(aff, height, width, radius)
    if aff_map.shape[0] != cam.shape[0]:
        raise ValueError(
            f"cam holds {cam.shape[0]} image(s) but aff {aff_map.shape[0]}: give one "
            "affinity tensor per CAM stack"
        )
    dtype = torch.promote_types(cam.dtype, aff.dtype)
    cam = cam.to(device=aff.device, dtype=dtype)  # psa moves its CAM vector to the GPU too
    out = _walk(cam, aff_map.to(dtype), float(beta), 2**logt, radius, "psa")
    return out[0] if single else out


def pair_loss(
    aff: torch.Tensor,
    bg_label: torch.Tensor,
    fg_label: torch.Tensor,
    neg_label: torch.Tensor,
) -> PairLoss:
    """psa train_aff's loss from its three float pair masks (docs/method.md §4).

    aff: psa's (B, K, n_from) affinities; bg_label, fg_label, neg_label: the masks psa's
    ExtractAffinityLabelInRadius gives (same shape, 0/1). Returns affext.PairLoss(loss,
    bg_loss, fg_loss, neg_loss, bg_count, fg_count, neg_count) with psa's values and gradient:
    loss = bg_loss/4 + fg_loss/4 + neg_loss/2; the counts are the masks' sums as int64 (psa
    adds 1e-5 to them before dividing, as done here).

    Changing the loader to `AffinityLabelMap` lets `pair_loss_from_labels` skip the masks.
    """
    aff = _tensor("aff", aff)
    masks = {"bg_label": bg_label, "fg_label": fg_label, "neg_label": neg_label}
    for name, mask in masks.items():
        _tensor(name, mask)
        if mask.shape != aff.shape:
            raise ValueError(
                f"{name} has shape {tuple(mask.shape)} but aff {tuple(aff.shape)}: the masks "
                "must be psa's (B, K, n_from) labels of the same crop"
            )
    bg, fg, neg = (m.to(aff.dtype) for m in masks.values())
    counts = [m.sum() + _EPS for m in (bg, fg, neg)]
    pos_log = -torch.log(aff + _EPS)
    bg_loss = (bg * pos_log).sum() / counts[0]
    fg_loss = (fg * pos_log).sum() / counts[1]
    neg_loss = (neg * -torch.log(1.0 + _EPS - aff)).sum() / counts[2]
    loss = bg_loss / 4 + fg_loss / 4 + neg_loss / 2
    return PairLoss(
        loss,
        bg_loss,
        fg_loss,
        neg_loss,
        *(c.detach().round().to(torch.int64) for c in counts),
    )


def pair_loss_from_labels(aff: torch.Tensor, labels: torch.Tensor, radius: int = 5) -> PairLoss:
    """psa's loss from the label map, through affext's fused kernel (no pair masks).

    aff: psa's (B, K, n_from) affinities or affext's (B, K, h, w) map; labels: (B, h, w)
    integer label map (0 background, classes, 255 ignored) as `AffinityLabelMap` gives it.
    Same pairs, same values as `pair_loss` on the masks psa would have built from `labels`.
    """
    aff, labels = _tensor("aff", aff), _tensor("labels", labels)
    if labels.dim() != 3:
        raise ValueError(f"labels must have shape (B, h, w), got {tuple(labels.shape)}")
    aff_map = to_map(aff, labels.shape[1], labels.shape[2], radius)
    return _fused_pair_loss(aff_map, labels, radius, "psa")


class AffinityLabelMap:
    """Drop-in for psa's voc12.data.ExtractAffinityLabelInRadius: keeps the label map.

    psa turns each crop's (h, w) label map into three (K, n_from) float masks in the loader;
    affext's pair loss decides the pair classes from the map itself. Same constructor as
    psa's (cropsize: the label map's side, i.e. psa's cropsize // 8; radius); calling it on
    an (h, w) label array returns it as a uint8 torch tensor, which the DataLoader stacks to
    the (B, h, w) labels of `pair_loss_from_labels`.
    """

    def __init__(self, cropsize: int | None = None, radius: int = 5) -> None:
        self.cropsize = cropsize
        self.radius = check_radius(radius)

    def __call__(self, label) -> torch.Tensor:
        label = torch.as_tensor(label)
        if label.dim() == 3 and label.shape[-1] == 1:
            label = label[..., 0]
        if label.dim() != 2:
            raise ValueError(f"label must be an (h, w) map, got shape {tuple(label.shape)}")
        if self.cropsize is not None and tuple(label.shape) != (self.cropsize, self.cropsize):
            raise ValueError(
                f"label map is {tuple(label.shape)}, expected {self.cropsize}x{self.cropsize} "
                "(cropsize // 8 of the image crop)"
            )
        if label.dtype != torch.uint8:
            if label.is_floating_point() or label.min() < 0 or label.max() > 255:
                raise ValueError("label values must be integers in [0, 255] (255: ignored)")
            label = label.to(torch.uint8)
        return label


def warn_dense() -> None:
    warnings.warn(
        "building psa's dense N x N affinity matrix (to_dense=True); "
        "affext.psa.random_walk(cam, net(x)) gives the same walk without it, in O(N) memory",
        stacklevel=3,
    )
