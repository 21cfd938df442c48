"""PAR (affext.pixel_adaptive_refine, affext.par) against the dense formulation of AFA / ToCo
(affext.reference.par), which materialises every neighbour as their module does."""

import pytest
import torch
import torch.nn.functional as F
from helpers import HALF_FLOATS, requires_cuda, structured_features

import affext
from affext.ops.par import NO_IMGS_GRADIENT, par_refine, par_weights
from affext.par import PAR, refine_cams_with_bkg_v2
from affext.reference.par import RING, par_affinity, par_reference, ring_neighbours

DEFAULT = (1, 2, 4, 8, 12, 24)


def images(b, h, w, dtype=torch.float32, seed=0):
    """(b, 3, h, w) images in about [0, 1]: flat regions plus noise, so that the colour
    affinity spreads over the neighbours."""
    torch.manual_seed(seed)
    return (0.5 + 0.25 * structured_features(b, 3, h, w, torch.float64)).to(dtype)


def maps(b, c, h, w, dtype=torch.float32, seed=1):
    torch.manual_seed(seed)
    return torch.rand(b, c, h, w, dtype=torch.float64).to(dtype)


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


# (imgs B, C, H, W), masks (h, w) or None (same size), dilations, num_iter
CASES = [
    ((1, 1, 13, 17), None, (1,), 1),
    ((2, 3, 21, 19), None, DEFAULT, 10),  # dilations beyond the image: replicate decides
    ((1, 21, 15, 11), None, (1, 3), 4),
    ((2, 4, 31, 29), (16, 15), DEFAULT, 10),  # masks resized first
    ((1, 2, 1, 7), None, (2, 5), 3),  # a single row
    ((1, 5, 9, 1), None, (1, 4), 2),  # a single column
    ((1, 3, 10, 12), None, (2, 2, 1), 7),  # repeated dilations
    ((2, 2, 2, 2), None, (40,), 5),
]


@pytest.mark.parametrize("shape,mask_size,dilations,num_iter", CASES)
def test_matches_reference_float32(shape, mask_size, dilations, num_iter):
    b, c, h, w = shape
    imgs = images(b, h, w)
    masks = maps(b, c, *(mask_size or (h, w)))
    ours = affext.pixel_adaptive_refine(imgs, masks, dilations, num_iter)
    ref = par_reference(imgs, masks, dilations, num_iter)
    assert ours.shape == (b, c, h, w) and ours.dtype == torch.float32
    assert rel_err(ours, ref) <= 1e-5
    # the reference is not trivial: it moves the masks and its weights sum to 1 + w2
    resized = F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=True)
    assert rel_err(ref, resized) > 1e-3
    total = par_affinity(imgs, dilations).sum(2)
    torch.testing.assert_close(total, torch.full_like(total, 1.01))


def test_weights_match_reference():
    imgs = images(2, 23, 17)
    ours = par_weights(imgs, DEFAULT)
    ref = par_affinity(imgs, DEFAULT).squeeze(1)
    assert ours.shape == (2, 48, 23, 17)
    assert rel_err(ours, ref) <= 1e-5
    assert (ref.amax(1) - ref.amin(1)).min() > 0.01  # weights that differ per neighbour


def test_reference_ring_order_and_replication():
    # plane 8 i + j of ring_neighbours is ring position j of dilations[i], clamped at borders
    x = torch.arange(5 * 6, dtype=torch.float64).view(1, 1, 5, 6)
    nb = ring_neighbours(x, (1, 7))
    assert RING == [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    for i, d in enumerate((1, 7)):
        for j, (dy, dx) in enumerate(RING):
            for y in range(5):
                for x_ in range(6):
                    want = x[0, 0, min(max(y + dy * d, 0), 4), min(max(x_ + dx * d, 0), 5)]
                    assert nb[0, 0, 8 * i + j, y, x_] == want


def test_float64_matches_reference_tightly():
    imgs, masks = images(1, 12, 14, torch.float64), maps(1, 3, 12, 14, torch.float64)
    ours = affext.pixel_adaptive_refine(imgs, masks, (1, 3, 20), 6)
    assert ours.dtype == torch.float64
    assert rel_err(ours, par_reference(imgs, masks, (1, 3, 20), 6)) <= 1e-12


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_inputs_against_float32(dtype, tol):
    imgs, masks = images(2, 19, 21, dtype), maps(2, 4, 19, 21, dtype)
    ours = affext.pixel_adaptive_refine(imgs, masks)
    assert ours.dtype == dtype
    want = affext.pixel_adaptive_refine(imgs.float(), masks.float())
    assert rel_err(ours, want) <= tol


def test_result_dtype_is_promoted_like_their_module():
    imgs, masks = images(1, 8, 9, torch.float16), maps(1, 2, 8, 9)
    assert affext.pixel_adaptive_refine(imgs, masks, (1,), 2).dtype == torch.float32
    masks64 = masks.double()
    out = affext.pixel_adaptive_refine(imgs.float(), masks64, (1,), 2)
    assert out.dtype == torch.float64


def test_zero_channels_stay_zero_and_do_not_change_the_others():
    imgs, masks = images(2, 17, 15), maps(2, 5, 17, 15)
    masks[0, 1] = 0
    masks[1, [0, 3, 4]] = 0
    out = affext.pixel_adaptive_refine(imgs, masks)
    assert torch.equal(out[0, 1], torch.zeros_like(out[0, 1]))
    assert torch.equal(out[1, [0, 3, 4]], torch.zeros_like(out[1, [0, 3, 4]]))
    alone = affext.pixel_adaptive_refine(imgs[1:], masks[1:, 1:2])
    assert torch.equal(out[1:, 1:2], alone)  # a channel's bits do not depend on the others
    assert rel_err(out, par_reference(imgs, masks)) <= 1e-5


def test_tiny_float64_values_are_not_taken_for_zero():
    imgs, masks = images(1, 7, 8, torch.float64), maps(1, 2, 7, 8, torch.float64)
    masks[0, 1] = 1e-300  # zero in float32, not in float64
    out = affext.pixel_adaptive_refine(imgs, masks, (1, 2), 3)
    assert rel_err(out, par_reference(imgs, masks, (1, 2), 3)) <= 1e-12
    assert (out[0, 1] > 0).all()


def test_deterministic_across_thread_counts():
    imgs, masks = images(2, 33, 29), maps(2, 3, 33, 29)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            m = masks.clone().requires_grad_()
            out = affext.pixel_adaptive_refine(imgs, m)
            (grad,) = torch.autograd.grad(out, m, torch.ones_like(out))
            results.append((out.detach(), grad))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_non_finite_values_propagate():
    imgs, masks = images(1, 9, 10), maps(1, 2, 9, 10)
    masks[0, 0, 4, 5] = float("nan")
    out = affext.pixel_adaptive_refine(imgs, masks, (1,), 2)
    assert out[0, 0].isnan().any() and not out[0, 1].isnan().any()


# ---- gradients ---------------------------------------------------------------------------
def test_gradcheck_float64():
    imgs = images(1, 6, 7, torch.float64)
    masks = maps(2 - 1, 2, 6, 7, torch.float64).requires_grad_()
    weights = par_weights(imgs, (1, 3, 9))

    def fn(m):
        return par_refine(m, weights, (1, 3, 9), 3)

    assert torch.autograd.gradcheck(fn, (masks,))
    assert torch.autograd.gradgradcheck(fn, (masks,))


def test_gradient_matches_reference_through_resize():
    imgs = images(2, 15, 13)
    masks = maps(2, 3, 8, 7).requires_grad_()
    seed = torch.randn(2, 3, 15, 13)
    (ours,) = torch.autograd.grad(affext.pixel_adaptive_refine(imgs, masks), masks, seed)
    (ref,) = torch.autograd.grad(par_reference(imgs, masks), masks, seed)
    assert rel_err(ours, ref) <= 1e-5


def test_no_gradient_in_imgs_is_an_error_not_a_detach():
    imgs = images(1, 8, 9).requires_grad_()
    masks = maps(1, 2, 8, 9).requires_grad_()
    out = affext.pixel_adaptive_refine(imgs, masks, (1, 2), 2)  # the forward runs
    with pytest.raises(RuntimeError, match="no gradient with respect to imgs"):
        out.sum().backward()
    assert "imgs.detach()" in NO_IMGS_GRADIENT
    only_imgs = affext.pixel_adaptive_refine(imgs, masks.detach(), (1, 2), 2)
    with pytest.raises(RuntimeError, match="no gradient with respect to imgs"):
        only_imgs.sum().backward()


# ---- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(dilations=(1, 0)), ValueError, r"dilations must hold 1 to 16 positive integers"),
        (dict(dilations=(-2,)), ValueError, "positive integers"),
        (dict(dilations=()), ValueError, "1 to 16"),
        (dict(dilations=tuple(range(1, 18))), ValueError, "1 to 16"),
        (dict(dilations=(1.5,)), TypeError, "dilations must be a sequence of ints"),
        (dict(dilations=3), TypeError, "dilations must be a sequence of ints"),
        (dict(num_iter=0), ValueError, "num_iter must be >= 1, got 0"),
        (dict(num_iter=-3), ValueError, "num_iter must be >= 1"),
        (dict(num_iter=2.0), TypeError, "num_iter must be an int"),
        (dict(w1=0.0), ValueError, "w1 must be > 0"),
        (dict(w2=-1.0), ValueError, "w2 >= 0"),
    ],
)
def test_argument_errors(kwargs, exc, match):
    imgs, masks = images(1, 6, 6), maps(1, 2, 6, 6)
    with pytest.raises(exc, match=match):
        affext.pixel_adaptive_refine(imgs, masks, **kwargs)


@pytest.mark.parametrize(
    "imgs,masks,exc,match",
    [
        (torch.rand(3, 6, 6), torch.rand(1, 2, 6, 6), ValueError, r"imgs must have shape"),
        (torch.rand(1, 3, 6, 6), torch.rand(2, 6, 6), ValueError, r"masks must have shape"),
        (torch.rand(1, 3, 6, 6), torch.rand(2, 2, 6, 6), ValueError, "the same batch"),
        (torch.rand(1, 3, 6, 6), torch.ones(1, 2, 6, 6, dtype=torch.long), TypeError, "float"),
        (torch.ones(1, 3, 6, 6, dtype=torch.uint8), torch.rand(1, 2, 6, 6), TypeError, "float"),
        (torch.rand(1, 3, 6, 6), [[1.0]], TypeError, "masks must be a torch.Tensor"),
        (torch.rand(1, 3, 6, 6), torch.rand(1, 2, 6, 6, device="meta"), ValueError, "meta"),
        (torch.rand(1, 3, 0, 6), torch.rand(1, 2, 0, 6), ValueError, "at least one"),
    ],
)
def test_input_errors(imgs, masks, exc, match):
    with pytest.raises(exc, match=match):
        affext.pixel_adaptive_refine(imgs, masks)


def test_op_errors_name_the_argument():
    imgs, masks = images(1, 6, 7), maps(1, 2, 6, 7)
    weights = par_weights(imgs, (1, 2))
    ops = torch.ops.affext
    # The raw ops' checks run in their kernels, built against the stable ABI, which carries
    # RuntimeError only (the wrappers raise ValueError / TypeError; tests/test_op_errors.py).
    with pytest.raises(RuntimeError, match=r"weights has 16 neighbours but dilations \[1\] have K"):
        ops.par_refine(masks, weights, [1], 2)
    with pytest.raises(RuntimeError, match="weights must be Float"):
        ops.par_refine(masks, weights.double(), [1, 2], 2)
    with pytest.raises(RuntimeError, match="must agree in batch and size"):
        ops.par_refine(masks[:, :, :5], weights, [1, 2], 2)
    with pytest.raises(RuntimeError, match="num_iter must be >= 1"):
        ops.par_refine_backward(masks, weights, [1, 2], 0)
    with pytest.raises(RuntimeError, match="dilations must be positive"):
        ops.par_weights(imgs, [1, 0], 0.3, 0.01)
    with pytest.raises(RuntimeError, match="w1 must be a positive number"):
        ops.par_weights(imgs, [1], -0.3, 0.01)


# ---- the drop-in for their code -------------------------------------------------------------
def test_par_module_is_their_module():
    par = PAR(num_iter=10, dilations=[1, 2, 4, 8, 12, 24])
    assert list(par.state_dict()) == ["kernel"] and par.kernel.shape == (8, 1, 3, 3)
    # filter j of the kernel, a dilated 3x3 convolution with padding d, reads ring position j
    x = torch.arange(7 * 8, dtype=torch.float32).view(1, 1, 7, 8)
    for d in (1, 3):
        conv = F.conv2d(F.pad(x, [d] * 4, mode="replicate"), par.kernel, dilation=d)
        assert torch.equal(conv, ring_neighbours(x, (d,))[:, 0])
    assert par.pos.shape == (1, 1, 48, 1, 1) and par.dim == 2
    assert (par.w1, par.w2) == (0.3, 0.01)
    par.load_state_dict(PAR([1, 2], 3).state_dict())
    assert par.to(torch.float64).kernel.dtype == torch.float64
    imgs, masks = images(2, 28, 28), maps(2, 4, 14, 14)
    out = PAR([1, 2, 4, 8, 12, 24], 10)(imgs, masks)
    assert rel_err(out, par_reference(imgs, masks)) <= 1e-5
    with pytest.raises(ValueError, match="num_iter"):
        PAR([1, 2], 0)


def toco_refine_cams_with_bkg_v2(
    ref_mod, images, cams, cls_labels, high_thre, low_thre, ignore_index, img_box, down_scale=2
):
    """ToCo's procedure, image by image and threshold by threshold (utils/camutils.py), written
    here from its description as the reference of affext.par's batched one."""
    b, _, h, w = images.shape
    small = F.interpolate(
        images, size=[h // down_scale, w // down_scale], mode="bilinear", align_corners=False
    )
    labels = {}
    for name, thre in (("h", high_thre), ("l", low_thre)):
        with_bkg = torch.cat((torch.full((b, 1, h, w), thre), cams), dim=1)
        with_bkg = F.interpolate(
            with_bkg, size=small.shape[-2:], mode="bilinear", align_corners=False
        )
        out = torch.full((b, h, w), float(ignore_index))
        for idx, (y0, y1, x0, x1) in enumerate(img_box):
            keep = torch.nonzero(torch.cat((torch.ones(1), cls_labels[idx])))[:, 0]
            probs = with_bkg[idx, keep].unsqueeze(0).softmax(dim=1)
            refined = F.interpolate(
                ref_mod(small[[idx]], probs), size=(h, w), mode="bilinear", align_corners=False
            )
            label = keep[refined.argmax(dim=1)][0].float()
            out[idx, y0:y1, x0:x1] = label[y0:y1, x0:x1]
        labels[name] = out
    result = labels["h"].clone()
    result[labels["h"] == 0] = ignore_index
    result[(labels["h"] + labels["l"]) == 0] = 0
    return result


def cam_inputs(b=3, classes=20, size=48):
    torch.manual_seed(3)
    imgs = images(b, size, size)
    cams = F.interpolate(torch.rand(b, classes, 6, 6), size=(size, size), mode="bilinear")
    cls_labels = torch.zeros(b, classes)
    cls_labels[0, [4, 14]] = 1
    cls_labels[1, 7] = 1
    cls_labels[2, [0, 2, 19]] = 1
    cams = cams * cls_labels[:, :, None, None]  # ToCo's CAMs of absent classes are zero
    boxes = torch.tensor([[0, size, 0, size], [4, 40, 2, 46], [10, 30, 0, 48]])
    return imgs, cams, cls_labels, boxes


@pytest.mark.parametrize("ignore_index", [255, False])
def test_refine_cams_with_bkg_v2_is_tocos(ignore_index):
    imgs, cams, cls_labels, boxes = cam_inputs()
    par = PAR(num_iter=10, dilations=[1, 2, 4, 8, 12])
    args = (imgs, cams, cls_labels, 0.45, 0.25, ignore_index, boxes)
    ours = refine_cams_with_bkg_v2(par, *args)
    assert ours.shape == (3, 48, 48) and ours.dtype == torch.float32
    want = toco_refine_cams_with_bkg_v2(par, *args)
    assert torch.equal(ours, want)
    if ignore_index == 255:  # with the dense formulation inside: equal but for near-ties
        dense = toco_refine_cams_with_bkg_v2(
            lambda i, m: par_reference(i, m, [1, 2, 4, 8, 12]), *args
        )
        assert (ours == dense).float().mean() >= 0.999
    # the labels are not trivial: background, classes and ignored pixels all occur
    values = set(ours.unique().tolist())
    assert {5.0, 15.0, 8.0} & values and 0.0 in values
    if ignore_index == 255:
        assert 255.0 in values


def test_refine_cams_with_bkg_v2_without_boxes():
    imgs, cams, cls_labels, _ = cam_inputs()
    par = PAR([1, 2, 4], 3)
    whole = torch.tensor([[0, 48, 0, 48]] * 3)
    args = (imgs, cams, cls_labels, 0.45, 0.25, 255)
    assert torch.equal(
        refine_cams_with_bkg_v2(par, *args, img_box=None),
        refine_cams_with_bkg_v2(par, *args, img_box=whole),
    )


@requires_cuda
def test_cuda_matches_cpu():
    imgs, masks = images(2, 37, 41), maps(2, 5, 20, 21)
    masks[1, 2] = 0
    want = affext.pixel_adaptive_refine(imgs, masks)
    got = affext.pixel_adaptive_refine(imgs.cuda(), masks.cuda())
    assert rel_err(got.cpu(), want) <= 1e-5
    assert torch.equal(got[1, 2].cpu(), torch.zeros_like(want[1, 2]))
    again = affext.pixel_adaptive_refine(imgs.cuda(), masks.cuda())
    assert torch.equal(got, again)
    m = masks.cuda().requires_grad_()
    seed = torch.randn(2, 5, 37, 41)
    (g,) = torch.autograd.grad(affext.pixel_adaptive_refine(imgs.cuda(), m), m, seed.cuda())
    mc = masks.clone().requires_grad_()
    (gc,) = torch.autograd.grad(affext.pixel_adaptive_refine(imgs, mc), mc, seed)
    assert rel_err(g.cpu(), gc) <= 1e-5
    for dtype in HALF_FLOATS:
        half = affext.pixel_adaptive_refine(imgs.cuda().to(dtype), masks.cuda().to(dtype))
        assert half.dtype == dtype and rel_err(half.float().cpu(), want) <= 2e-2


@requires_cuda
def test_cuda_graph_capture():
    imgs, masks = images(2, 32, 32).cuda(), maps(2, 4, 32, 32).cuda()
    want = affext.pixel_adaptive_refine(imgs, masks)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        affext.pixel_adaptive_refine(imgs, masks)  # warm up on the side stream
        with torch.cuda.graph(graph, stream=stream):
            out = affext.pixel_adaptive_refine(imgs, masks)
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, want)
