"""affext.psa, depths 1 and 2: psa's tensors and psa's network patched in place.

The references are psa's formulations written here from docs/method.md §3-5 (index arrays of
the from-region, an explicit difference tensor, the three float masks, the dense matrix
squared logt times), not psa's code; the stand-in networks have psa's attribute names and
forward structure (network/resnet38_aff.py) with small channel counts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import requires_cuda
from torch import nn

import affext
import affext.psa as psa

RADIUS = 5


# ---------------------------------------------------------------- psa's formulations, here
def half_disk(radius: int) -> list[tuple[int, int]]:
    out = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        out += [(dy, dx) for dx in range(1 - radius, radius) if dx * dx + dy * dy < radius**2]
    return out


def pair_index_arrays(h: int, w: int, radius: int = RADIUS) -> tuple[np.ndarray, np.ndarray]:
    """(n_from,) and (K * n_from,) flat indices of psa's pairs: from-region rows [0, h-r+1),
    columns [r-1, w-r+1), offset-major."""
    r1 = radius - 1
    grid = np.arange(h * w).reshape(h, w)
    hf, wf = h - r1, w - 2 * r1
    src = grid[:hf, r1 : r1 + wf].ravel()
    dst = np.concatenate(
        [grid[dy : dy + hf, r1 + dx : r1 + dx + wf].ravel() for dy, dx in half_disk(radius)]
    )
    return src, dst


def dense_psa_affinity(feat: torch.Tensor, radius: int = RADIUS) -> torch.Tensor:
    """psa's (B, K, n_from) affinity through an explicit (B, C, K, n_from) difference."""
    b, c, h, w = feat.shape
    src, dst = (torch.from_numpy(a) for a in pair_index_arrays(h, w, radius))
    flat = feat.reshape(b, c, h * w)
    f_from = flat[:, :, src].unsqueeze(2)
    f_to = flat[:, :, dst].reshape(b, c, -1, src.numel())
    return torch.exp(-(f_to - f_from).abs().mean(dim=1))


def dense_matrix(aff: torch.Tensor, h: int, w: int, radius: int = RADIUS) -> torch.Tensor:
    """N x N matrix from one image's (K, n_from) affinities via a sparse COO tensor."""
    src, dst = (torch.from_numpy(a) for a in pair_index_arrays(h, w, radius))
    k = dst.numel() // src.numel()
    rows = torch.cat([src.repeat(k), dst, torch.arange(h * w)])
    cols = torch.cat([dst, src.repeat(k), torch.arange(h * w)])
    vals = torch.cat([aff.reshape(-1), aff.reshape(-1), torch.ones(h * w, dtype=aff.dtype)])
    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), vals, (h * w, h * w), check_invariants=True
    ).to_dense()


def dense_walk(cam: torch.Tensor, aff: torch.Tensor, beta: float, logt: int) -> torch.Tensor:
    """psa infer_aff: A**beta, column-normalised, squared logt times, one product."""
    c, h, w = cam.shape
    a = dense_matrix(aff, h, w) ** beta
    t = a / a.sum(dim=0, keepdim=True)
    for _ in range(logt):
        t = t @ t
    return (cam.reshape(c, -1) @ t).reshape(c, h, w)


def psa_masks(label: np.ndarray, radius: int = RADIUS) -> tuple[torch.Tensor, ...]:
    """psa's three (K, n_from) float masks of an (h, w) label map (docs/method.md §4)."""
    h, w = label.shape
    src, dst = pair_index_arrays(h, w, radius)
    l_from = label.ravel()[src][None]
    l_to = label.ravel()[dst].reshape(-1, src.size)
    valid = (l_from != 255) & (l_to != 255)
    same = l_from == l_to
    bg = same & (l_from == 0)
    fg = same & (l_from != 0) & valid
    neg = ~same & valid
    return tuple(torch.from_numpy(m.astype(np.float32)) for m in (bg, fg, neg))


def psa_loss_lines(aff, bg, fg, neg):
    """psa train_aff's lines, in its own order of operations."""
    bg_count, fg_count, neg_count = bg.sum() + 1e-5, fg.sum() + 1e-5, neg.sum() + 1e-5
    bg_loss = torch.sum(-bg * torch.log(aff + 1e-5)) / bg_count
    fg_loss = torch.sum(-fg * torch.log(aff + 1e-5)) / fg_count
    neg_loss = torch.sum(-neg * torch.log(1.0 + 1e-5 - aff)) / neg_count
    return bg_loss / 4 + fg_loss / 4 + neg_loss / 2, bg_loss, fg_loss, neg_loss


def random_labels(gen: torch.Generator, b: int, h: int, w: int) -> np.ndarray:
    """Blocky label maps with background, two classes and ignored cells."""
    coarse = torch.randint(0, 4, (b, (h + 2) // 3, (w + 2) // 3), generator=gen).numpy()
    lab = coarse.repeat(3, axis=1).repeat(3, axis=2)[:, :h, :w].astype(np.uint8)
    lab[lab == 3] = 255
    return lab


# ----------------------------------------------------------------------- depth 1: tensors
@pytest.mark.parametrize("shape", [(1, 448, 7, 10), (2, 16, 12, 15)])
def test_affinity_is_psa_tensor(shape):
    feat = torch.randn(shape, dtype=torch.float64)
    got = psa.affinity(feat)
    ref = dense_psa_affinity(feat)
    k = len(half_disk(RADIUS))
    assert got.shape == (shape[0], k, (shape[2] - 4) * (shape[3] - 8))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_affinity_gradient():
    small = torch.randn(1, 3, 6, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(psa.affinity, (small,), eps=1e-6, atol=1e-7)
    feat = torch.randn(2, 6, 7, 10, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(2, 34, 3 * 2, dtype=torch.float64)
    (g,) = torch.autograd.grad((psa.affinity(feat) * weight).sum(), feat)
    (g_ref,) = torch.autograd.grad((dense_psa_affinity(feat) * weight).sum(), feat)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_to_map_inverts_psa_layout():
    aff = torch.rand(2, 34, 5 * 7, dtype=torch.float64, requires_grad=True)
    m = psa.to_map(aff, 9, 15)
    assert m.shape == (2, 34, 9, 15)
    assert torch.equal(affext.psa_layout(m), aff)
    # zero outside psa's from-region: rows >= 5, columns < 4 or >= 11
    assert m[:, :, 5:].abs().sum() == 0 and m[..., :4].abs().sum() == 0
    assert m[..., 11:].abs().sum() == 0
    (g,) = torch.autograd.grad(m.sum(), aff)
    assert torch.equal(g, torch.ones_like(aff))
    assert psa.to_map(m, 9, 15) is m
    with pytest.raises(ValueError, match=r"psa's layout for a 9x15 map .* \(B, 34, 35\)"):
        psa.to_map(aff[..., :-1], 9, 15)


def test_dense_matrix_is_psa_to_dense():
    feat = torch.randn(1, 8, 8, 11, dtype=torch.float64)
    aff = psa.affinity(feat)
    mat = psa.dense_affinity_matrix(aff, 8, 11)
    torch.testing.assert_close(mat, dense_matrix(aff[0], 8, 11), rtol=0, atol=0)
    torch.testing.assert_close(psa.dense_affinity_matrix(psa.to_map(aff, 8, 11), 8, 11), mat)
    with pytest.raises(ValueError, match="one image"):
        psa.dense_affinity_matrix(aff.expand(2, -1, -1), 8, 11)


@pytest.mark.parametrize("beta,logt", [(8, 8), (2.5, 3)])
def test_random_walk_is_psa_matmul(beta, logt):
    feat = torch.randn(2, 12, 10, 13, dtype=torch.float64)
    aff = psa.affinity(feat) * 0.9 + 0.05
    cam = torch.rand(2, 21, 10, 13, dtype=torch.float64)
    cam[:, 5:] = 0  # psa's CAMs: background and a few classes
    got = psa.random_walk(cam, aff, beta=beta, logt=logt)
    for b in range(2):
        ref = dense_walk(cam[b], aff[b], beta, logt)
        torch.testing.assert_close(got[b], ref, rtol=1e-9, atol=1e-12)
    # one image as psa holds it: (21, h, w) and (1, K, n_from); or affext's map
    one = psa.random_walk(cam[1], aff[1:], beta=beta, logt=logt)
    assert one.shape == (21, 10, 13)
    torch.testing.assert_close(one, got[1], rtol=0, atol=0)
    via_map = psa.random_walk(cam, psa.to_map(aff, 10, 13), beta=beta, logt=logt)
    torch.testing.assert_close(via_map, got, rtol=0, atol=0)


def test_random_walk_errors():
    cam, aff = torch.rand(21, 10, 13), torch.rand(1, 34, 6 * 5)
    with pytest.raises(ValueError, match="logt"):
        psa.random_walk(cam, aff, logt=-1)
    with pytest.raises(ValueError, match="cam holds 2 image"):
        psa.random_walk(cam.expand(2, -1, -1, -1), aff)
    with pytest.raises(ValueError, match=r"\(B, 34, 30\)"):
        psa.random_walk(cam, aff[..., :-2])


def test_pair_loss_is_psa_lines():
    gen = torch.Generator().manual_seed(3)
    labels = random_labels(gen, 2, 11, 14)
    masks = [torch.stack(m) for m in zip(*(psa_masks(lab) for lab in labels))]
    aff = (
        torch.rand(2, 34, 7 * 6, dtype=torch.float64, generator=gen)
        .mul(0.98)
        .add(0.01)
        .requires_grad_()
    )
    got = psa.pair_loss(aff, *masks)
    ref = psa_loss_lines(aff, *(m.double() for m in masks))
    for a, b in zip(got[:4], ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    for count, mask in zip(got[4:], masks):
        assert count.dtype == torch.int64 and count.item() == int(mask.sum())
    assert min(int(c) for c in got[4:]) > 0  # every class is exercised
    for part in range(4):
        (g,) = torch.autograd.grad(got[part], aff, retain_graph=True)
        (g_ref,) = torch.autograd.grad(ref[part], aff, retain_graph=True)
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-15)


def test_label_map_pair_loss_matches_masks():
    gen = torch.Generator().manual_seed(4)
    labels = random_labels(gen, 3, 12, 13)
    transform = psa.AffinityLabelMap(cropsize=12, radius=5)
    with pytest.raises(ValueError, match="expected 12x12"):
        transform(labels[0])
    transform = psa.AffinityLabelMap()
    batch = torch.stack([transform(lab) for lab in labels])
    assert batch.dtype == torch.uint8 and torch.equal(batch, torch.from_numpy(labels))
    masks = [torch.stack(m).double() for m in zip(*(psa_masks(lab) for lab in labels))]
    feat = torch.randn(3, 8, 12, 13, dtype=torch.float64, requires_grad=True)
    aff = psa.affinity(feat)
    fused = psa.pair_loss_from_labels(aff, batch)
    ref = psa.pair_loss(aff, *masks)
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    (g,) = torch.autograd.grad(fused.loss, feat, retain_graph=True)
    (g_ref,) = torch.autograd.grad(ref.loss, feat)
    torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-12)


def test_pair_loss_errors():
    aff = torch.rand(1, 34, 12)
    with pytest.raises(ValueError, match="fg_label has shape"):
        psa.pair_loss(aff, torch.zeros_like(aff), torch.zeros(1, 34), torch.zeros_like(aff))
    with pytest.raises(ValueError, match=r"labels must have shape \(B, h, w\)"):
        psa.pair_loss_from_labels(aff, torch.zeros(5, 12, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"integers in \[0, 255\]"):
        psa.AffinityLabelMap()(np.full((4, 4), 300))


# --------------------------------------------------------------- depth 2: patch(net)
class _StandInBackbone(nn.Module):
    """psa's resnet38d.Net interface at small size: forward_as_dict -> conv4, conv5, conv6."""

    def __init__(self, channels=(8, 12, 16)):
        super().__init__()
        self.conv1a = nn.Conv2d(3, channels[0], 3, stride=2, padding=1, bias=False)
        self.b4 = nn.Conv2d(channels[0], channels[0], 3, stride=2, padding=1, bias=False)
        self.b5 = nn.Conv2d(channels[0], channels[1], 3, stride=2, padding=1, bias=False)
        self.b6 = nn.Conv2d(channels[1], channels[2], 3, padding=2, dilation=2, bias=False)

    def forward_as_dict(self, x):
        conv4 = F.relu(self.b4(F.relu(self.conv1a(x))))
        x = F.relu(self.b5(conv4))
        return {"conv4": F.avg_pool2d(conv4, 2, ceil_mode=True), "conv5": x, "conv6": self.b6(x)}


class StandInAffNet(_StandInBackbone):
    """psa's network/resnet38_aff.Net structure: f8_3/f8_4/f8_5 + ELU, concat, f9 + ELU, then
    psa's index_select formulation (to_dense: the N x N matrix through a sparse tensor)."""

    def __init__(self, channels=(8, 12, 16)):
        super().__init__(channels)
        self.f8_3 = nn.Conv2d(channels[0], 64, 1, bias=False)
        self.f8_4 = nn.Conv2d(channels[1], 128, 1, bias=False)
        self.f8_5 = nn.Conv2d(channels[2], 256, 1, bias=False)
        self.f9 = nn.Conv2d(448, 448, 1, bias=False)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)

    def forward(self, x, to_dense=False):
        d = self.forward_as_dict(x)
        parts = [F.elu(self.f8_3(d["conv4"])), F.elu(self.f8_4(d["conv5"]))]
        parts.append(F.elu(self.f8_5(d["conv6"])))
        feat = F.elu(self.f9(torch.cat(parts, dim=1)))
        aff = dense_psa_affinity(feat)
        if to_dense:
            return dense_matrix(aff.reshape(-1), feat.shape[2], feat.shape[3])
        return aff


def _params_grads(net, out):
    grads = torch.autograd.grad(out, [p for p in net.parameters()], allow_unused=True)
    return grads


def test_patch_matches_unpatched_network():
    torch.manual_seed(1)
    net = StandInAffNet().double()
    x = torch.randn(2, 3, 80, 96, dtype=torch.float64)
    ref = net(x)
    assert ref.shape == (2, 34, (10 - 4) * (12 - 8))
    weight = torch.rand_like(ref)
    ref_grads = _params_grads(net, (ref * weight).sum())

    assert psa.patch(net) is net and psa.is_patched(net)
    assert isinstance(net, StandInAffNet) and type(net).__name__ == "StandInAffNet"
    got = net(x)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(_params_grads(net, (got * weight).sum()), ref_grads):
        torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-10)
    # the state dict is unchanged; patching twice is a no-op; unpatch restores psa's forward
    assert list(net.state_dict()) == list(StandInAffNet().state_dict())
    assert psa.patch(net) is net and type(net).__mro__[1] is StandInAffNet
    psa.unpatch(net)
    assert type(net) is StandInAffNet and not psa.is_patched(net)


def test_patched_to_dense_builds_psa_matrix_with_warning():
    torch.manual_seed(2)
    net = StandInAffNet().double()
    x = torch.randn(1, 3, 72, 88, dtype=torch.float64)
    ref = net(x, True)
    psa.patch(net)
    with pytest.warns(UserWarning, match="affext.psa.random_walk"):
        got = net(x, True)
    assert got.shape == (9 * 11, 9 * 11) and got.device == x.device
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_patch_walk_equals_psa_infer_aff_path():
    """psa infer_aff's lines with the patched net, and the fast path, give the same walk."""
    torch.manual_seed(3)
    net = psa.patch(StandInAffNet().double().eval())
    x = torch.randn(1, 3, 72, 88, dtype=torch.float64)
    cam = torch.rand(21, 9, 11, dtype=torch.float64)
    with torch.no_grad(), pytest.warns(UserWarning):
        aff_mat = torch.pow(net(x, True), 8)
        trans = aff_mat / aff_mat.sum(dim=0, keepdim=True)
        for _ in range(8):
            trans = trans @ trans
        ref = (cam.reshape(21, -1) @ trans).reshape(21, 9, 11)
    with torch.no_grad():
        got = psa.random_walk(cam, net(x), beta=8, logt=8)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)


def test_patch_vgg_structure_and_errors():
    class StandInVggAff(StandInAffNet):
        def __init__(self):
            super().__init__()
            self.gn8_3, self.gn8_4 = nn.GroupNorm(8, 64), nn.GroupNorm(16, 128)
            self.gn8_5 = nn.GroupNorm(32, 256)

        def forward_as_dict(self, x):
            d = super().forward_as_dict(x)
            return {"conv4": d["conv4"], "conv5": d["conv5"], "conv5fc": d["conv6"]}

        def forward(self, x, to_dense=False):
            d = self.forward_as_dict(x)
            parts = [
                F.elu(self.gn8_3(self.f8_3(d["conv4"]))),
                F.elu(self.gn8_4(self.f8_4(d["conv5"]))),
                F.elu(self.gn8_5(self.f8_5(d["conv5fc"]))),
            ]
            return dense_psa_affinity(F.elu(self.f9(torch.cat(parts, dim=1))))

    net = StandInVggAff().double()
    x = torch.randn(1, 3, 72, 80, dtype=torch.float64)
    ref = net(x)
    torch.testing.assert_close(psa.patch(net)(x), ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="not psa's AffinityNet .*f8_3"):
        psa.patch(nn.Conv2d(1, 1, 1))


@pytest.mark.cuda
@requires_cuda
def test_cuda_patch_dense_on_device_and_walk_from_cpu_cam():
    torch.manual_seed(4)
    net = StandInAffNet().cuda()
    x = torch.randn(1, 3, 72, 88, device="cuda")
    ref = net(x).cpu()
    psa.patch(net)
    aff = net(x)
    torch.testing.assert_close(aff.cpu(), ref, rtol=1e-4, atol=1e-5)
    with pytest.warns(UserWarning):
        mat = net(x, True)
    assert mat.device.type == "cuda"
    torch.testing.assert_close(mat.cpu(), dense_matrix(ref[0], 9, 11), rtol=1e-4, atol=1e-5)
    cam = torch.rand(21, 9, 11)  # on the CPU, as psa's pooled CAMs are
    got = psa.random_walk(cam, aff.detach())
    assert got.device.type == "cuda"
    ref_walk = dense_walk(cam.double(), ref[0].detach().double(), 8, 8).float()
    torch.testing.assert_close(got.cpu(), ref_walk, rtol=1e-3, atol=1e-5)
