"""random_walk against psa's dense walk and explicit dense products, written apart from the
kernels (affext.reference.random_walk)."""

import pytest
import torch
from helpers import requires_cuda

import affext
from affext.reference.random_walk import (
    dense_transition,
    psa_dense_random_walk,
    psa_dense_walk,
    torch_sparse_random_walk,
    torch_sparse_walk,
)


def realistic_inputs(b, c, h, w, dtype=torch.float32, radius=5, live=None):
    """Blocky features (regions with noise) and CAMs with peaks: the affinities are high inside
    regions and low across them, as AffinityNet's are."""
    coarse = torch.randn(b, 16, (h + 5) // 6, (w + 5) // 6, dtype=torch.float64)
    feat = torch.nn.functional.interpolate(coarse, size=(h, w), mode="nearest")
    feat = 3 * feat + 0.2 * torch.randn(b, 16, h, w, dtype=torch.float64)
    aff = affext.pairwise_affinity(feat, radius)
    ys = torch.arange(h, dtype=torch.float64).view(h, 1)
    xs = torch.arange(w, dtype=torch.float64).view(1, w)
    cam = torch.zeros(b, c, h, w, dtype=torch.float64)
    for i in range(b):
        for ch in range(c):
            if live is not None and ch not in live:
                continue
            cy, cx = torch.rand(2) * torch.tensor([h, w])
            cam[i, ch] = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (0.05 * h * w))
    return cam.to(dtype), aff.to(dtype)


def max_relative_error(ours, ref):
    return ((ours.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


@pytest.mark.parametrize("h,w", [(14, 17), (24, 24)])
def test_psa_region_equals_psa_dense_float64(h, w):
    cam, aff = realistic_inputs(2, 4, h, w, torch.float64)
    ours = affext.random_walk(cam, aff, beta=8, iterations=256, radius=5, region="psa")
    for i in range(2):
        ref = psa_dense_walk(cam[i], affext.psa_layout(aff, 5)[i], h, w, beta=8, logt=8)
        torch.testing.assert_close(ours[i], ref, rtol=1e-9, atol=1e-12)


def test_psa_region_float32_accuracy_and_argmax():
    h, w = 28, 28
    cam, aff = realistic_inputs(2, 21, h, w, torch.float32, live={0, 3, 11})
    ours = affext.random_walk(cam, aff)  # psa's defaults: beta 8, t 256, radius 5, "psa"
    assert (ours[:, [1, 2, 4]] == 0).all()  # absent classes stay exactly zero
    for i in range(2):
        ref = psa_dense_walk(cam[i].double(), affext.psa_layout(aff, 5)[i].double(), h, w)
        assert max_relative_error(ours[i], ref) <= 1e-4
        agree = (ours[i].argmax(0) == ref.argmax(0)).double().mean().item()
        assert agree >= 0.999


@pytest.mark.parametrize("radius,iterations", [(5, 1), (5, 37), (3, 100), (2, 5)])
def test_full_region_equals_explicit_products(radius, iterations):
    h, w = 11, 13
    cam, aff = realistic_inputs(1, 3, h, w, torch.float64, radius=radius)
    ours = affext.random_walk(
        cam, aff, beta=3.5, iterations=iterations, radius=radius, region="full"
    )
    trans = dense_transition(aff[0], radius, "full", beta=3.5)
    v = cam[0].reshape(3, -1)
    for _ in range(iterations):
        v = v @ trans
    torch.testing.assert_close(ours[0], v.reshape(3, h, w), rtol=1e-9, atol=1e-12)


def test_psa_region_non_power_of_two_iterations():
    h, w = 12, 15
    cam, aff = realistic_inputs(1, 2, h, w, torch.float64)
    trans = dense_transition(aff[0], 5, "psa", beta=8)
    v = cam[0].reshape(2, -1)
    for _ in range(19):
        v = v @ trans
    torch.testing.assert_close(
        affext.random_walk(cam, aff, iterations=19)[0], v.reshape(2, h, w), rtol=1e-9, atol=1e-12
    )


def test_torch_sparse_reference_agrees():
    h, w = 16, 16
    cam, aff = realistic_inputs(2, 3, h, w, torch.float64)
    sparse = torch_sparse_walk(cam[0], affext.psa_layout(aff, 5)[0], h, w, iterations=64)
    ours = affext.random_walk(cam, aff, iterations=64)
    torch.testing.assert_close(ours[0], sparse)
    # the batched forms the benchmarks time
    torch.testing.assert_close(torch_sparse_random_walk(cam, aff, iterations=64), ours)
    torch.testing.assert_close(psa_dense_random_walk(cam, aff, iterations=64), ours)


def test_batch_equals_one_by_one_and_strides():
    cam, aff = realistic_inputs(3, 5, 13, 16, live={0, 2, 4})
    batched = affext.random_walk(cam, aff, iterations=50)
    for i in range(3):
        torch.testing.assert_close(
            batched[i : i + 1], affext.random_walk(cam[i : i + 1], aff[i : i + 1], iterations=50)
        )
    strided = affext.random_walk(
        cam.transpose(2, 3).contiguous().transpose(2, 3),
        aff.to(memory_format=torch.channels_last),
        iterations=50,
    )
    torch.testing.assert_close(strided, batched)


@pytest.mark.parametrize("live", [{0, 3, 11}, set(range(7)), set(range(21))])
def test_deterministic_across_threads(live):
    # Channel blocks are sized by the thread count; a pixel's sum must not depend on them.
    cam, aff = realistic_inputs(2, 21, 23, 26, live=live)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3, 5):
            torch.set_num_threads(n)
            results.append(affext.random_walk(cam, aff, iterations=21))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_large_map_few_channels_any_thread_count():
    # Maps of 128 x 128 or more with a few live channels split each step by rows (with a
    # barrier) rather than by channel: same sums, at every thread count, as the reference.
    cam, aff = realistic_inputs(1, 21, 130, 131, torch.float64, live={0, 4, 11})
    ref = torch_sparse_random_walk(cam, aff, iterations=7)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(affext.random_walk(cam, aff, iterations=7))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], r) for r in results[1:])
    assert max_relative_error(results[0], ref) < 1e-12


def test_requires_grad_inputs_give_detached_result():
    cam, aff = realistic_inputs(1, 2, 9, 10)
    out = affext.random_walk(cam.requires_grad_(), aff.requires_grad_(), iterations=3)
    assert not out.requires_grad


def test_opcheck():
    cam, aff = realistic_inputs(1, 3, 9, 10)
    torch.library.opcheck(torch.ops.affext.random_walk.default, (cam, aff, 8.0, 4, 5, 0))


def test_empty_batch():
    cam, aff = torch.zeros(0, 3, 9, 9), torch.zeros(0, 34, 9, 9)
    assert affext.random_walk(cam, aff).shape == (0, 3, 9, 9)


@pytest.mark.parametrize(
    "change,exc,match",
    [
        (dict(aff=torch.rand(1, 33, 9, 10)), ValueError, "radius 5 has K = 34"),
        (dict(cam=torch.rand(1, 3, 9, 11)), ValueError, "must agree"),
        (dict(cam=torch.rand(2, 3, 9, 10)), ValueError, "must agree"),
        (dict(cam=torch.rand(3, 9, 10)), ValueError, "cam must have shape"),
        (dict(beta=0.0), ValueError, "beta must be > 0"),
        (dict(iterations=0), ValueError, "iterations must be >= 1"),
        (dict(iterations=2.0), TypeError, "iterations must be an int"),
        (dict(region="dense"), ValueError, "region must be one of"),
        (dict(aff=-torch.rand(1, 34, 9, 10)), ValueError, "negative"),
        (dict(aff=torch.full((1, 34, 9, 10), float("nan"))), ValueError, "aff contains NaN"),
        (dict(cam=torch.full((1, 3, 9, 10), float("nan"))), ValueError, "cam contains NaN"),
        (dict(cam=torch.ones(1, 3, 9, 10, dtype=torch.int64)), TypeError, "floating-point"),
        (dict(aff=torch.rand(1, 34, 4, 10), cam=torch.rand(1, 3, 4, 10)), ValueError, "at least"),
    ],
)
def test_errors(change, exc, match):
    args = dict(
        cam=torch.rand(1, 3, 9, 10),
        aff=torch.rand(1, 34, 9, 10),
        beta=8.0,
        iterations=4,
        radius=5,
        region="psa",
    )
    args.update(change)
    with pytest.raises(exc, match=match):
        affext.random_walk(**args)


@requires_cuda
@pytest.mark.parametrize("size", [(28, 28), (130, 140)])  # in shared memory, and not
@pytest.mark.parametrize("region", ["psa", "full"])
def test_cuda_matches_cpu(size, region):
    cam, aff = realistic_inputs(2, 21, *size, torch.float64, live={0, 5, 7})
    cpu = affext.random_walk(cam, aff, iterations=60, region=region)
    gpu = affext.random_walk(cam.cuda(), aff.cuda(), iterations=60, region=region)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-12)
    gpu32 = affext.random_walk(cam.float().cuda(), aff.float().cuda(), iterations=60, region=region)
    assert max_relative_error(gpu32.cpu(), cpu) <= 1e-4
