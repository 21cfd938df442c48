"""pairwise_affinity against psa's dense formulation, written apart from the kernels."""

import pytest
import torch
from helpers import TOLERANCES, requires_cuda, structured_features

import affext
from affext import _extension
from affext.reference.affinity import psa_affinity


def full_reference(feat: torch.Tensor, radius: int) -> torch.Tensor:
    """Every pair inside the map, by shifting a zero-padded copy: (B, K, H, W), 0 outside."""
    b, c, h, w = feat.shape
    pad = radius - 1
    padded = torch.nn.functional.pad(feat, (pad, pad, pad, pad))
    inside = torch.nn.functional.pad(torch.ones(1, 1, h, w, dtype=feat.dtype), (pad,) * 4)
    out = []
    for dy, dx in affext.neighborhood_offsets(radius):
        shifted = padded[:, :, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
        valid = inside[:, :, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
        aff = torch.exp(-(feat - shifted).abs().mean(1, keepdim=True))
        out.append(aff * valid)
    return torch.cat(out, 1)


def test_offsets_psa_order_radius5():
    offs = affext.neighborhood_offsets(5)
    assert len(offs) == 34
    assert offs[:4] == ((0, 1), (0, 2), (0, 3), (0, 4))
    assert offs[4] == (1, -4) and offs[-1] == (4, 2)
    full_disk = set(offs) | {(-dy, -dx) for dy, dx in offs} | {(0, 0)}
    assert len(full_disk) == 69


@pytest.mark.parametrize("radius", range(2, 17))
def test_offsets_match_kernels(radius):
    assert _extension.kernel_neighborhood_offsets(radius) == list(
        affext.neighborhood_offsets(radius)
    )


@pytest.mark.parametrize(
    "shape,radius",
    [
        ((1, 3, 8, 8), 2),
        ((2, 5, 9, 13), 3),
        ((3, 4, 12, 10), 4),
        ((2, 16, 17, 23), 5),
        ((1, 7, 11, 12), 6),
        ((2, 448, 14, 14), 5),
    ],
)
def test_forward_equals_psa(shape, radius):
    feat = structured_features(*shape)
    aff = affext.pairwise_affinity(feat, radius)
    assert aff.shape == (shape[0], len(affext.neighborhood_offsets(radius)), *shape[2:])
    torch.testing.assert_close(
        affext.psa_layout(aff, radius), psa_affinity(feat, radius), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("radius", [2, 5])
def test_forward_full_map(radius):
    feat = structured_features(2, 6, 13, 11, torch.float64)
    aff = affext.pairwise_affinity(feat, radius)
    torch.testing.assert_close(aff, full_reference(feat, radius))
    # a neighbour outside the map gives exactly 0, one inside never does
    assert (aff[:, 0, :, -1] == 0).all() and (aff[:, 0, :, : -radius + 1] > 0).all()


@pytest.mark.parametrize("radius", [2, 5])
def test_backward_equals_psa(radius):
    feat = structured_features(2, 12, 15, 14).requires_grad_()
    weights = torch.rand(2, len(affext.neighborhood_offsets(radius)), 15, 14)
    (affext.pairwise_affinity(feat, radius) * weights).sum().backward()
    ours = feat.grad.clone()
    feat.grad = None
    # the same objective through the dense formulation on every pair of the map
    (full_reference(feat, radius) * weights).sum().backward()
    torch.testing.assert_close(ours, feat.grad, rtol=1e-4, atol=1e-6)


def test_backward_psa_region_only():
    radius = 5
    feat = structured_features(1, 8, 12, 16, torch.float64).requires_grad_()
    affext.psa_layout(affext.pairwise_affinity(feat, radius), radius).pow(2).sum().backward()
    ours = feat.grad.clone()
    feat.grad = None
    psa_affinity(feat, radius).pow(2).sum().backward()
    torch.testing.assert_close(ours, feat.grad)


@pytest.mark.parametrize("radius", [2, 3])
def test_gradcheck_float64(radius):
    feat = torch.randn(2, 3, radius + 3, 2 * radius + 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: affext.pairwise_affinity(f, radius), (feat,))


def test_backward_deterministic():
    feat = structured_features(2, 32, 20, 20).requires_grad_()
    grads = []
    for _ in range(3):
        feat.grad = None
        affext.pairwise_affinity(feat, 5).log().sum().backward()
        grads.append(feat.grad.clone())
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def test_torch_compile():
    feat = torch.randn(1, 4, 9, 10, requires_grad=True)
    compiled = torch.compile(
        lambda f: affext.pairwise_affinity(f, 3).sum(), backend="aot_eager", fullgraph=True
    )
    compiled(feat).backward()
    expected = torch.autograd.grad(affext.pairwise_affinity(feat, 3).sum(), feat)[0]
    torch.testing.assert_close(feat.grad, expected)


def test_non_contiguous_input():
    base = structured_features(2, 9, 14, 16)
    for feat in (
        base.to(memory_format=torch.channels_last),
        base.transpose(2, 3),
        base[:, ::2],
        base[..., 1:],
    ):
        assert not feat.is_contiguous()
        torch.testing.assert_close(
            affext.pairwise_affinity(feat, 3), affext.pairwise_affinity(feat.contiguous(), 3)
        )


def test_empty_batch():
    aff = affext.pairwise_affinity(torch.randn(0, 4, 9, 9), 5)
    assert aff.shape == (0, 34, 9, 9)


@pytest.mark.parametrize(
    "feat,radius,exc,match",
    [
        (torch.randn(4, 9, 9), 5, ValueError, "feat must have shape"),
        (torch.randint(0, 5, (1, 4, 9, 9)), 5, TypeError, "feat must be a floating-point"),
        (torch.randn(1, 4, 9, 9, dtype=torch.float16), 5, TypeError, "float32 or float64"),
        (torch.randn(1, 4, 9, 9), 1, ValueError, "radius must be in"),
        (torch.randn(1, 4, 9, 9), 17, ValueError, "radius must be in"),
        (torch.randn(1, 4, 9, 9), 5.0, TypeError, "radius must be an int"),
        (torch.randn(1, 4, 4, 9), 5, ValueError, "needs a map of at least 5x9"),
        (torch.randn(1, 4, 9, 8), 5, ValueError, "needs a map of at least 5x9"),
        (torch.randn(1, 0, 9, 9), 5, ValueError, "at least one channel"),
    ],
)
def test_errors(feat, radius, exc, match):
    with pytest.raises(exc, match=match):
        affext.pairwise_affinity(feat, radius)


def test_error_not_a_tensor():
    with pytest.raises(TypeError, match="feat must be a torch.Tensor"):
        affext.pairwise_affinity([[1.0]], 5)


def test_psa_layout_errors():
    with pytest.raises(ValueError, match="radius 5 has K = 34"):
        affext.psa_layout(torch.zeros(1, 12, 9, 9), 5)


@requires_cuda
@pytest.mark.parametrize("dtype,tol", TOLERANCES.items())
@pytest.mark.parametrize(
    "shape,radius",
    [
        ((2, 63, 37, 45), 5),  # several tiles and channel chunks, an odd channel count
        ((1, 5, 19, 21), 8),  # 96 offsets: several passes per block
        ((2, 3, 5, 9), 5),  # the smallest map radius 5 allows, one partial tile
    ],
)
def test_cuda_matches_cpu(dtype, tol, shape, radius):
    # the CPU reference sees the same (rounded) values: no sign of f_p - f_q can differ
    feat = structured_features(*shape).to(dtype)
    k = len(affext.neighborhood_offsets(radius))
    weights = torch.rand(shape[0], k, *shape[2:]).to(dtype)
    cpu = feat.double().requires_grad_()
    cpu_aff = affext.pairwise_affinity(cpu, radius)
    (cpu_aff * weights.double()).sum().backward()
    gpu = feat.to("cuda").requires_grad_()
    aff = affext.pairwise_affinity(gpu, radius)
    assert aff.dtype == dtype
    (aff * weights.to("cuda", dtype)).sum().backward()
    torch.testing.assert_close(aff.double().cpu(), cpu_aff.detach(), rtol=tol, atol=tol)
    # the gradient sums 2K terms of +-w: compare on the scale of its largest entries
    scale = cpu.grad.abs().max().item()
    torch.testing.assert_close(
        gpu.grad.double().cpu(), cpu.grad, rtol=10 * tol, atol=10 * tol * scale
    )


@requires_cuda
def test_cuda_deterministic_and_device_errors():
    feat = structured_features(2, 32, 20, 20).cuda().requires_grad_()
    grads = []
    for _ in range(2):
        feat.grad = None
        affext.pairwise_affinity(feat, 5).log().sum().backward()
        grads.append(feat.grad.clone())
    assert torch.equal(grads[0], grads[1])
    aff = affext.pairwise_affinity(feat.detach(), 5)
    with pytest.raises(ValueError, match="grad is on"):
        torch.ops.affext.pairwise_affinity_backward(aff.cpu(), feat.detach(), aff, 5)
