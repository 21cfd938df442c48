"""random_walk against psa's dense walk and explicit dense products, written apart from the
kernels (affext.reference.random_walk)."""

import pytest
import torch
from helpers import requires_cuda
from torch._subclasses.fake_tensor import FakeTensorMode

import affext
from affext.ops.random_walk import walk_result_dtype
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


def small_map_inputs(h, w, radius, device="cpu"):
    """Random CAMs and affinities of any map size (pairwise_affinity needs psa's minimum)."""
    k = len(affext.neighborhood_offsets(radius))
    cam = torch.rand(1, 3, h, w, dtype=torch.float64)
    aff = torch.rand(1, k, h, w, dtype=torch.float64)
    return cam.to(device), aff.to(device)


def full_region_dense_walk(cam, aff, radius, beta, iterations):
    """(C, H, W) walk of one image by explicit products with the dense full-region T."""
    c, h, w = cam.shape
    trans = dense_transition(aff.cpu().double(), radius, "full", beta=beta)
    v = cam.cpu().double().reshape(c, -1)
    for _ in range(iterations):
        v = v @ trans
    return v.reshape(c, h, w)


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


def walk_with_threads(threads, *args, **kwargs):
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        return affext.random_walk(*args, **kwargs)
    finally:
        torch.set_num_threads(saved)


@pytest.fixture
def avx2_walk(monkeypatch):
    """The CPU walk forced onto its AVX2 path (AFFEXT_WALK_CPU_PATH=avx2); skips where the
    CPU or the build has none (the kernel then refuses the forced path)."""
    monkeypatch.setenv("AFFEXT_WALK_CPU_PATH", "avx2")
    try:
        affext.random_walk(*realistic_inputs(1, 2, 9, 10), iterations=1)
    except ValueError as exc:
        if "no AVX2+FMA path" not in str(exc):
            raise
        pytest.skip("this CPU or build has no AVX2+FMA walk")


@pytest.mark.parametrize("live", [{0, 3, 11}, set(range(7)), set(range(21))])
def test_same_bits_for_every_channel_block(live, monkeypatch, avx2_walk):
    # A channel's sums must not depend on which block (1 to 6 channels, each its own
    # instantiation of the AVX2 kernel) or thread it lands in: every multiply-add is an
    # explicit FMA in one fixed order. A kernel whose blocks rounded differently (a contracted
    # FMA in one, a multiply and an add in another) fails here, on any compiler.
    cam, aff = realistic_inputs(2, 21, 23, 26, live=live)
    reference = affext.random_walk(cam, aff, iterations=21)
    for block in range(1, 7):
        monkeypatch.setenv("AFFEXT_WALK_CPU_BLOCK", str(block))
        for threads in (1, 2, 3):
            out = walk_with_threads(threads, cam, aff, iterations=21)
            assert torch.equal(out, reference), f"block {block}, {threads} threads"


def test_portable_path_is_the_gpu_math(monkeypatch):
    # The portable path runs random_walk.h's per-pixel step (the CUDA kernel's): it must equal
    # psa's dense walk, and give the same bits at any thread count.
    monkeypatch.setenv("AFFEXT_WALK_CPU_PATH", "portable")
    h, w = 14, 17
    cam, aff = realistic_inputs(2, 6, h, w, torch.float64, live={0, 1, 2, 3, 5})
    ours = affext.random_walk(cam, aff)
    for i in range(2):
        ref = psa_dense_walk(cam[i], affext.psa_layout(aff, 5)[i], h, w, beta=8, logt=8)
        torch.testing.assert_close(ours[i], ref, rtol=1e-9, atol=1e-12)
    cam32, aff32 = cam.float(), aff.float()
    runs = [walk_with_threads(n, cam32, aff32, iterations=30) for n in (1, 2, 3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    monkeypatch.delenv("AFFEXT_WALK_CPU_PATH")
    assert max_relative_error(runs[0], affext.random_walk(cam32, aff32, iterations=30)) < 1e-5


@pytest.mark.parametrize("path", ["default", "portable"])
@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (3, 7), (1, 12), (9, 2)])
def test_full_region_any_map_size(h, w, path, monkeypatch):
    if path == "portable":
        monkeypatch.setenv("AFFEXT_WALK_CPU_PATH", "portable")
    for radius in (5, 3):
        cam, aff = small_map_inputs(h, w, radius)
        ours = affext.random_walk(cam, aff, beta=8, iterations=9, radius=radius, region="full")
        ref = full_region_dense_walk(cam[0], aff[0], radius, beta=8, iterations=9)
        torch.testing.assert_close(ours[0], ref, rtol=1e-9, atol=1e-12)


def test_result_dtype_fake_agrees_with_kernel():
    for cam_dtype, aff_dtype in [
        (torch.float32, torch.float32),
        (torch.float32, torch.float64),
        (torch.float64, torch.float32),
    ]:
        cam, aff = realistic_inputs(1, 2, 9, 10)
        cam, aff = cam.to(cam_dtype), aff.to(aff_dtype)
        real = torch.ops.affext.random_walk(cam, aff, 8.0, 3, 5, 0)
        with FakeTensorMode() as mode:
            fake = torch.ops.affext.random_walk(
                mode.from_tensor(cam), mode.from_tensor(aff), 8.0, 3, 5, 0
            )
        assert real.dtype == fake.dtype == walk_result_dtype(cam_dtype, aff_dtype)
        assert real.shape == fake.shape
    assert walk_result_dtype(torch.float16, torch.float16) == torch.float32
    assert walk_result_dtype(torch.bfloat16, torch.float64) == torch.float64
    empty_aff = torch.zeros(0, 34, 9, 9, dtype=torch.float64)
    empty = affext.random_walk(torch.zeros(0, 3, 9, 9), empty_aff)
    assert empty.dtype == torch.float64


def test_fake_takes_any_map_size_with_the_full_region():
    # as the kernel does; what it refuses is in test_op_errors.py (eagerly and traced alike)
    with FakeTensorMode():
        cam, aff = torch.empty(1, 3, 4, 10), torch.empty(1, 34, 4, 10)
        assert torch.ops.affext.random_walk(cam, aff, 8.0, 3, 5, 1).shape == (1, 3, 4, 10)


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
        (dict(aff=torch.rand(1, 34, 9, 10) + 1.5), ValueError, "above 1"),
        (dict(aff=torch.full((1, 34, 9, 10), float("nan"))), ValueError, "aff contains NaN"),
        (dict(aff=torch.full((1, 34, 9, 10), float("inf"))), ValueError, "aff contains NaN or inf"),
        (dict(cam=torch.full((1, 3, 9, 10), float("nan"))), ValueError, "cam contains NaN"),
        (dict(cam=torch.full((1, 3, 9, 10), float("-inf"))), ValueError, "cam contains NaN or inf"),
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


# CUDA: run on a GPU machine (scripts/gpu_check.sh); skipped without one.
CUDA_MODES = ["auto", "resident", "streamed", "per-step"]


def cuda_walk(mode, monkeypatch, *args, **kwargs):
    """The walk with the CUDA kernel's launch mode forced (AFFEXT_WALK_CUDA_MODE)."""
    if mode == "auto":
        monkeypatch.delenv("AFFEXT_WALK_CUDA_MODE", raising=False)
    else:
        monkeypatch.setenv("AFFEXT_WALK_CUDA_MODE", mode)
    try:
        return affext.random_walk(*args, **kwargs)
    except ValueError as error:  # resident needs the shared memory of an H100/H200's SMs
        if "do not fit" in str(error):
            pytest.skip(f"{mode} mode does not fit this GPU: {error}")
        raise


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("size", [(28, 28), (56, 56), (130, 140)])
@pytest.mark.parametrize("region", ["psa", "full"])
def test_cuda_matches_cpu_and_dense(size, region):
    cam, aff = realistic_inputs(2, 21, *size, torch.float64, live={0, 5, 7})
    cpu = affext.random_walk(cam, aff, iterations=60, region=region)
    gpu = affext.random_walk(cam.cuda(), aff.cuda(), iterations=60, region=region)
    assert gpu.dtype == torch.float64
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-12)
    gpu32 = affext.random_walk(cam.float().cuda(), aff.float().cuda(), iterations=60, region=region)
    assert max_relative_error(gpu32.cpu(), cpu) <= 1e-4
    assert (gpu32[:, [1, 2, 3, 4, 6]] == 0).all()  # dead channels stay exactly zero
    if size == (28, 28) and region == "psa":  # psa's own dense walk, t = 256
        ours = affext.random_walk(cam.cuda(), aff.cuda())
        for i in range(2):
            ref = psa_dense_walk(cam[i], affext.psa_layout(aff, 5)[i], *size)
            torch.testing.assert_close(ours[i].cpu(), ref, rtol=1e-9, atol=1e-12)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (3, 7), (5, 40)])
def test_cuda_full_region_small_maps(h, w):
    for radius in (5, 2):
        cam, aff = small_map_inputs(h, w, radius, "cuda")
        ours = affext.random_walk(cam, aff, iterations=7, radius=radius, region="full")
        ref = full_region_dense_walk(cam[0], aff[0], radius, beta=8, iterations=7)
        torch.testing.assert_close(ours[0].cpu(), ref, rtol=1e-9, atol=1e-12)


@pytest.mark.cuda
@requires_cuda
def test_cuda_512_map():
    # The size the weights no longer fit in shared memory: streamed from L2.
    cam, aff = realistic_inputs(1, 21, 512, 512, torch.float64, live={0, 8, 15})
    cpu = affext.random_walk(cam, aff, iterations=40)
    gpu = affext.random_walk(cam.cuda(), aff.cuda(), iterations=40)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-12)
    gpu32 = affext.random_walk(cam.float().cuda(), aff.float().cuda(), iterations=40)
    assert max_relative_error(gpu32.cpu(), cpu) <= 1e-4


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("mode", CUDA_MODES)
def test_cuda_batch_of_maps_mixed_live_channels(mode, monkeypatch):
    # 16 maps of 63 x 63 in one call, each with its own live channels (none, one, psa's
    # three, all 21): every map equals its own walk on the CPU, and every launch mode gives
    # the same bits.
    b, c, h, w = 16, 21, 63, 63
    cam, aff = realistic_inputs(b, c, h, w, torch.float64)
    lives = [set(), {0}, {0, 4, 9}, set(range(c)), {20}, {1, 2, 3, 4, 5}]
    for i in range(b):
        dead = [ch for ch in range(c) if ch not in lives[i % len(lives)]]
        cam[i, dead] = 0
    cpu = affext.random_walk(cam, aff, iterations=33)
    gpu = affext.random_walk(cam.cuda(), aff.cuda(), iterations=33)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-12)
    assert (gpu[0] == 0).all()
    cam32, aff32 = cam.float().cuda(), aff.float().cuda()
    auto = cuda_walk("auto", monkeypatch, cam32, aff32, iterations=33)
    assert max_relative_error(auto.cpu(), cpu) <= 1e-4
    assert torch.equal(cuda_walk(mode, monkeypatch, cam32, aff32, iterations=33), auto)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("size", [56, 200])
def test_cuda_same_bits_every_run_and_mode(size, monkeypatch):
    cam, aff = realistic_inputs(2, 21, size, size, torch.float32, live={0, 3, 11, 12, 13})
    cam, aff = cam.cuda(), aff.cuda()
    first = cuda_walk("auto", monkeypatch, cam, aff, iterations=50)
    assert torch.equal(first, cuda_walk("auto", monkeypatch, cam, aff, iterations=50))
    for mode in ("streamed", "per-step"):
        assert torch.equal(first, cuda_walk(mode, monkeypatch, cam, aff, iterations=50)), mode


@pytest.mark.cuda
@requires_cuda
def test_cuda_graph_capture_and_replay():
    cam, aff = realistic_inputs(2, 21, 47, 63, torch.float32, live={0, 7, 15})
    cam, aff = cam.cuda(), aff.cuda()
    eager = affext.random_walk(cam, aff)
    static_cam, static_aff = cam.clone(), aff.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the graph
        affext.random_walk(static_cam, static_aff)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = affext.random_walk(static_cam, static_aff)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, eager)
    other_cam, other_aff = realistic_inputs(2, 21, 47, 63, torch.float32, live={0, 2})
    static_cam.copy_(other_cam.cuda())
    static_aff.copy_(other_aff.cuda())
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, affext.random_walk(static_cam, static_aff))


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize(
    "change,match",
    [
        (dict(aff=-torch.rand(1, 34, 9, 10)), "negative"),
        (dict(aff=torch.rand(1, 34, 9, 10) + 1.5), "above 1"),
        (dict(aff=torch.full((1, 34, 9, 10), float("nan"))), "aff contains NaN"),
        (dict(cam=torch.full((1, 3, 9, 10), float("inf"))), "cam contains NaN or inf"),
    ],
)
def test_cuda_value_errors(change, match):
    args = dict(cam=torch.rand(1, 3, 9, 10), aff=torch.rand(1, 34, 9, 10))
    args.update(change)
    with pytest.raises(ValueError, match=match):
        affext.random_walk(args["cam"].cuda(), args["aff"].cuda())
    # the device stays usable after the error
    cam, aff = torch.rand(1, 3, 9, 10), torch.rand(1, 34, 9, 10)
    torch.testing.assert_close(
        affext.random_walk(cam.cuda(), aff.cuda()).cpu(), affext.random_walk(cam, aff)
    )


@pytest.mark.cuda
@requires_cuda
def test_cuda_half_inputs_walk_in_float32():
    cam, aff = realistic_inputs(1, 21, 28, 28, torch.float32, live={0, 1})
    half = affext.random_walk(cam.half().cuda(), aff.half().cuda(), iterations=30)
    assert half.dtype == torch.float32 == walk_result_dtype(torch.float16, torch.float16)
    ref = affext.random_walk(cam.half().float(), aff.half().float(), iterations=30)
    assert max_relative_error(half.cpu(), ref) <= 1e-4
    empty_cam = torch.zeros(0, 3, 9, 9, dtype=torch.float16, device="cuda")
    empty = affext.random_walk(empty_cam, torch.zeros(0, 34, 9, 9, device="cuda"))
    assert empty.dtype == torch.float32
