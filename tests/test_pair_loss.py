"""pair_loss and affinity_labels against psa's mask build + train_aff loss, written apart
from the kernels (affext/reference/pair_loss.py)."""

import pytest
import torch
from helpers import TOLERANCES, requires_cuda, structured_features

import affext
from affext.reference.affinity import psa_affinity
from affext.reference.pair_loss import psa_affinity_labels, psa_pair_loss

PARTS = ("loss", "bg_loss", "fg_loss", "neg_loss")
COUNTS = ("bg_count", "fg_count", "neg_count")


def random_labels(b, h, w, dtype=torch.uint8):
    """Pixelwise labels from {0, 1, 2, 3, 255}: every pair class occurs everywhere."""
    values = torch.tensor([0, 0, 1, 2, 3, 255])
    return values[torch.randint(0, len(values), (b, h, w))].to(dtype)


def blocky_labels(b, h, w, dtype=torch.uint8, block=4):
    """Regions of one label (a few classes, background and 255), like psa's label maps."""
    values = torch.tensor([0, 0, 0, 5, 5, 12, 255])
    coarse = values[
        torch.randint(0, len(values), (b, 1, (h + block - 1) // block, (w + block - 1) // block))
    ]
    up = torch.nn.functional.interpolate(coarse.float(), scale_factor=block, mode="nearest")
    return up[:, 0, :h, :w].to(dtype)


LABELS = {"random": random_labels, "blocky": blocky_labels}


def full_region_reference(labels, radius):
    """The full region as psa's from-region of a map padded with 255 (left, right, bottom):
    its from-pixels are exactly the original pixels, and pairs leaving the map are ignored.
    Returns the masks as (B, K, H, W)."""
    rf = radius - 1
    b, h, w = labels.shape
    padded = torch.nn.functional.pad(labels.long(), (rf, rf, 0, rf), value=255)
    return tuple(m.reshape(b, -1, h, w) for m in psa_affinity_labels(padded, radius))


def reference_masks(labels, radius, region):
    if region == "psa":
        return psa_affinity_labels(labels.long(), radius)
    return full_region_reference(labels, radius)


def to_region_layout(aff, radius, region):
    """aff (B, K, H, W) in the layout of reference_masks."""
    return affext.psa_layout(aff, radius) if region == "psa" else aff


@pytest.mark.parametrize("kind", ["random", "blocky"])
@pytest.mark.parametrize("region", ["psa", "full"])
@pytest.mark.parametrize("radius,shape", [(2, (2, 7, 9)), (3, (3, 11, 10)), (5, (3, 17, 19))])
def test_affinity_labels_equal_psa(kind, region, radius, shape):
    labels = LABELS[kind](*shape)
    ours = affext.affinity_labels(labels, radius, region)
    for got, expected in zip(ours, reference_masks(labels, radius, region)):
        assert got.dtype == torch.float32 and got.shape == expected.shape
        assert torch.equal(got, expected)
    # every pair is in at most one class
    assert (ours.bg_pos + ours.fg_pos + ours.neg).max() <= 1


def test_affinity_labels_full_layout():
    labels = blocky_labels(2, 10, 12)
    masks = affext.affinity_labels(labels, 5, "full")
    assert masks.neg.shape == (2, 34, 10, 12)
    # offset (0, 1) leaves the map from the last column: no pair there
    assert (
        masks.bg_pos[:, 0, :, -1] + masks.fg_pos[:, 0, :, -1] + masks.neg[:, 0, :, -1] == 0
    ).all()
    # the psa region's masks are the full ones in psa's layout
    psa = affext.affinity_labels(labels, 5, "psa")
    for full, part in zip(masks, psa):
        assert torch.equal(affext.psa_layout(full, 5), part)


@pytest.mark.parametrize("kind", ["random", "blocky"])
@pytest.mark.parametrize("region", ["psa", "full"])
@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int64])
def test_loss_and_feature_gradient_equal_psa(kind, region, label_dtype):
    radius, (b, c, h, w) = 5, (3, 8, 16, 18)
    labels = LABELS[kind](b, h, w, label_dtype)
    feat = structured_features(b, c, h, w).requires_grad_()
    aff = affext.pairwise_affinity(feat, radius)
    ours = affext.pair_loss(aff, labels, radius, region)
    ours.loss.backward()
    our_grad = feat.grad.clone()
    feat.grad = None

    masks = reference_masks(labels, radius, region)
    if region == "psa":
        ref_aff = psa_affinity(feat, radius)
    else:
        ref_aff = affext.pairwise_affinity(feat, radius)  # full-map values, tested elsewhere
    ref = psa_pair_loss(ref_aff.reshape(masks[0].shape), *masks)
    ref["loss"].backward()
    for name in PARTS:
        value = getattr(ours, name)
        assert value.dtype == torch.float32 and value.dim() == 0
        torch.testing.assert_close(value, ref[name], rtol=2e-6, atol=1e-7)
    for name in COUNTS:
        assert getattr(ours, name).dtype == torch.int64
        assert getattr(ours, name).item() == ref[name].item()
    assert ours.bg_count > 0 and ours.fg_count > 0 and ours.neg_count > 0
    torch.testing.assert_close(our_grad, feat.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("region", ["psa", "full"])
def test_gradient_through_every_part_float64(region):
    radius = 3
    labels = blocky_labels(2, 9, 11, block=2)
    aff = (0.02 + 0.96 * torch.rand(2, 12, 9, 11, dtype=torch.float64)).requires_grad_()
    weights = torch.tensor([0.7, -1.3, 2.0, 0.4], dtype=torch.float64)
    ours = affext.pair_loss(aff, labels, radius, region)
    assert ours.loss.dtype == torch.float64
    sum(w * getattr(ours, n) for w, n in zip(weights, PARTS)).backward()
    our_grad = aff.grad.clone()
    aff.grad = None
    masks = reference_masks(labels, radius, region)
    ref = psa_pair_loss(to_region_layout(aff, radius, region), *masks)
    sum(w * ref[n] for w, n in zip(weights, PARTS)).backward()
    for name in PARTS:
        torch.testing.assert_close(getattr(ours, name), ref[name])
    torch.testing.assert_close(our_grad, aff.grad)
    if region == "psa":  # pairs outside psa's from-region get no gradient
        rows, cols = affext.neighborhood.from_region(9, 11, radius)
        outside = torch.ones(9, 11, dtype=torch.bool)
        outside[rows, cols] = False
        assert (our_grad[:, :, outside] == 0).all()


@pytest.mark.parametrize("region", ["psa", "full"])
def test_gradcheck_float64(region):
    radius = 2
    labels = random_labels(2, 5, 6)
    aff = (0.05 + 0.9 * torch.rand(2, 4, 5, 6, dtype=torch.float64)).requires_grad_()

    def parts(a):
        out = affext.pair_loss(a, labels, radius, region)
        return out.loss, out.bg_loss, out.fg_loss, out.neg_loss

    assert torch.autograd.gradcheck(parts, (aff,))


def test_no_pairs_of_a_class_give_zero():
    aff = torch.rand(2, 34, 12, 12, requires_grad=True)
    background = torch.zeros(2, 12, 12, dtype=torch.uint8)
    out = affext.pair_loss(aff, background)
    assert out.fg_count == 0 and out.neg_count == 0 and out.bg_count == 2 * 34 * 8 * 4
    assert out.fg_loss == 0 and out.neg_loss == 0
    assert torch.isfinite(out.loss) and out.loss > 0
    ignored = torch.full((2, 12, 12), 255, dtype=torch.uint8)
    out = affext.pair_loss(aff, ignored, region="full")
    assert all(getattr(out, n) == 0 for n in PARTS + COUNTS)
    out.loss.backward()
    assert torch.equal(aff.grad, torch.zeros_like(aff))


def test_empty_batch():
    out = affext.pair_loss(torch.rand(0, 34, 9, 9), torch.zeros(0, 9, 9, dtype=torch.uint8))
    assert out.loss == 0 and out.bg_count == 0
    assert affext.affinity_labels(torch.zeros(0, 9, 9, dtype=torch.uint8)).bg_pos.shape == (
        0,
        34,
        5,
    )


def test_int32_and_uint8_labels_agree():
    labels = blocky_labels(2, 11, 13)
    aff = torch.rand(2, 34, 11, 13)
    a = affext.pair_loss(aff, labels)
    b = affext.pair_loss(aff, labels.int())
    assert all(torch.equal(getattr(a, n), getattr(b, n)) for n in PARTS + COUNTS)


def test_non_contiguous_aff():
    labels = random_labels(2, 12, 14)
    base = torch.rand(2, 14, 12, 34).permute(0, 3, 2, 1)
    assert not base.is_contiguous()
    a = affext.pair_loss(base, labels, region="full")
    b = affext.pair_loss(base.contiguous(), labels, region="full")
    assert torch.equal(a.loss, b.loss)


def test_deterministic_across_threads():
    labels = blocky_labels(4, 30, 30)
    aff = torch.rand(4, 34, 30, 30, requires_grad=True)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            aff.grad = None
            out = affext.pair_loss(aff, labels)
            (out.bg_loss + 2 * out.neg_loss).backward()
            results.append((out.loss.detach(), aff.grad.clone()))
    finally:
        torch.set_num_threads(threads)
    assert all(
        torch.equal(results[0][0], r[0]) and torch.equal(results[0][1], r[1]) for r in results[1:]
    )


def test_torch_compile():
    labels = blocky_labels(2, 9, 10)
    aff = torch.rand(2, 12, 9, 10, requires_grad=True)
    compiled = torch.compile(
        lambda a: affext.pair_loss(a, labels, 3).loss, backend="aot_eager", fullgraph=True
    )
    compiled(aff).backward()
    expected = torch.autograd.grad(affext.pair_loss(aff, labels, 3).loss, aff)[0]
    torch.testing.assert_close(aff.grad, expected)


def u8(*shape, device="cpu"):
    return torch.zeros(shape, dtype=torch.uint8, device=device)


AFF, U8_LABELS = torch.rand(2, 34, 9, 9), u8(2, 9, 9)


@pytest.mark.parametrize(
    "aff,labels,kwargs,exc,match",
    [
        (AFF, u8(2, 9, 10), {}, ValueError, "must agree in B, H and W"),
        (AFF, u8(3, 9, 9), {}, ValueError, "must agree in B, H and W"),
        (AFF, u8(9, 9), {}, ValueError, r"labels must have shape \(B, H, W\)"),
        (torch.rand(34, 9, 9), u8(1, 9, 9), {}, ValueError, r"aff must have shape \(B, K, H, W\)"),
        (AFF, U8_LABELS, {"radius": 4}, ValueError, "aff has 34 offsets but radius 4 has K = 22"),
        (AFF, torch.zeros(2, 9, 9), {}, TypeError, "labels must be an integer tensor"),
        (AFF, U8_LABELS.bool(), {}, TypeError, "labels must be an integer tensor"),
        (
            AFF,
            torch.full((2, 9, 9), 256),
            {},
            ValueError,
            r"labels must lie in 0..255 .*got values in \[256, 256\]",
        ),
        (AFF, torch.full((2, 9, 9), -1), {}, ValueError, "labels must lie in 0..255"),
        (AFF.long(), U8_LABELS, {}, TypeError, "aff must be a floating-point"),
        (AFF, U8_LABELS, {"region": "half"}, ValueError, "region must be one of"),
        (AFF, U8_LABELS, {"radius": 5.0}, TypeError, "radius must be an int"),
        (torch.rand(2, 34, 4, 9), u8(2, 4, 9), {}, ValueError, "needs a map of at least 5x9"),
        (AFF, u8(2, 9, 9, device="meta"), {}, ValueError, "same device"),
        (AFF, [[0]], {}, TypeError, "labels must be a torch.Tensor"),
    ],
)
def test_errors(aff, labels, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        affext.pair_loss(aff, labels, **kwargs)


def test_full_region_small_map_and_label_errors():
    # the full region has pairs on maps smaller than psa's from-region needs
    out = affext.pair_loss(
        torch.rand(1, 34, 3, 3), torch.zeros(1, 3, 3, dtype=torch.uint8), region="full"
    )
    assert out.bg_count == sum(
        1
        for dy, dx in affext.neighborhood_offsets(5)
        for y in range(3)
        for x in range(3)
        if 0 <= y + dy < 3 and 0 <= x + dx < 3
    )
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        affext.affinity_labels(torch.zeros(1, 9, 9))
    aff, labels = torch.rand(1, 34, 9, 9), torch.zeros(1, 9, 9, dtype=torch.uint8)
    counts = torch.zeros(3, dtype=torch.int64)
    # The raw backward op's checks run in its kernel, built against the stable ABI, which
    # carries RuntimeError only (the message is the same; tests/test_op_errors.py).
    with pytest.raises(RuntimeError, match="grad_fg_loss must be a 0-dim tensor"):
        torch.ops.affext.pair_loss_backward(
            None, None, torch.ones(2), None, counts, aff, labels, 5, 0
        )
    with pytest.raises(RuntimeError, match="counts must be the forward's"):
        torch.ops.affext.pair_loss_backward(
            torch.ones(()), None, None, None, counts.float(), aff, labels, 5, 0
        )


@requires_cuda
@pytest.mark.parametrize("region", ["psa", "full"])
@pytest.mark.parametrize("dtype,tol", TOLERANCES.items())
def test_cuda_matches_cpu(region, dtype, tol):
    labels = blocky_labels(3, 40, 44)
    aff64 = 0.02 + 0.96 * torch.rand(3, 34, 40, 44, dtype=torch.float64)
    # two leaves of their own (for float64, .to(dtype) would return aff64 itself)
    cpu_aff = aff64.to(dtype).double().clone().requires_grad_()
    cpu = affext.pair_loss(cpu_aff, labels, 5, region)
    (cpu.loss + cpu.fg_loss).backward()
    gpu_aff = aff64.to("cuda", dtype, copy=True).requires_grad_()
    assert cpu_aff.is_leaf and gpu_aff.is_leaf
    gpu = affext.pair_loss(gpu_aff, labels.cuda(), 5, region)
    (gpu.loss + gpu.fg_loss).backward()
    for name in PARTS:
        torch.testing.assert_close(
            getattr(gpu, name).double().cpu(), getattr(cpu, name), rtol=tol, atol=tol
        )
    for name in COUNTS:
        assert getattr(gpu, name).item() == getattr(cpu, name).item()
    torch.testing.assert_close(
        gpu_aff.grad.double().cpu(), cpu_aff.grad, rtol=10 * tol, atol=10 * tol
    )
    for got, expected in zip(
        affext.affinity_labels(labels.cuda(), 5, region), affext.affinity_labels(labels, 5, region)
    ):
        assert torch.equal(got.cpu(), expected)


@requires_cuda
def test_cuda_deterministic_and_device_errors():
    labels = blocky_labels(8, 56, 56).cuda()
    aff = torch.rand(8, 34, 56, 56, device="cuda", requires_grad=True)
    runs = []
    for _ in range(2):
        aff.grad = None
        out = affext.pair_loss(aff, labels)
        out.loss.backward()
        runs.append((out.loss.detach(), aff.grad.clone()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    with pytest.raises(ValueError, match="same device"):
        affext.pair_loss(aff, labels.cpu())
    with pytest.raises(ValueError, match="labels is on"):
        torch.ops.affext.pair_loss(aff, labels.cpu(), 5, 0)


@requires_cuda
def test_cuda_graph_capture_and_replay():
    """pairwise_affinity and pair_loss, forward and backward, captured in one CUDA graph: a host
    synchronisation inside either op would fail the capture. Replays equal eager runs, also
    after new features are copied into the captured input."""
    feat = structured_features(2, 24, 20, 22).cuda().requires_grad_()
    labels = blocky_labels(2, 20, 22).cuda()

    def step(f):
        out = affext.pair_loss(affext.pairwise_affinity(f, 5), labels)
        (out.loss + out.fg_loss).backward()
        return out

    def eager(values):
        f = values.detach().clone().requires_grad_()
        out = step(f)
        return out.loss.detach(), out.neg_count, f.grad

    stream = torch.cuda.Stream()  # warm-up on a side stream, as torch.cuda.graph asks
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            feat.grad = None
            step(feat)
    torch.cuda.current_stream().wait_stream(stream)
    feat.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step(feat)
    for values in (feat.detach().clone(), 0.5 * feat.detach() + 0.1):
        with torch.no_grad():
            feat.copy_(values)
        graph.replay()
        torch.cuda.synchronize()
        loss, neg_count, grad = eager(values)
        assert torch.equal(captured.loss, loss) and torch.equal(captured.neg_count, neg_count)
        assert torch.equal(feat.grad, grad)
