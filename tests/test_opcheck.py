"""torch.library.opcheck of every affext op on every device present, with several samples each.

opcheck runs the op against its schema, its fake kernel (shapes and dtypes under
FakeTensorMode and torch.compile's AOT dispatch) and its autograd registration. The samples
vary shapes, dtypes (half and bfloat16 on CUDA), radius, region and requires_grad; they are
small, since each opcheck call traces the op several times.
"""

import torch
from helpers import FULL_FLOATS, float_dtypes

import affext

OPS = torch.ops.affext


def labels_on(device, b, h, w, dtype=torch.uint8):
    values = torch.tensor([0, 0, 1, 2, 255])
    return values[torch.randint(0, len(values), (b, h, w))].to(device=device, dtype=dtype)


def aff_on(device, b, radius, h, w, dtype=torch.float32, requires_grad=False):
    k = len(affext.neighborhood_offsets(radius))
    aff = 0.05 + 0.9 * torch.rand(b, k, h, w, dtype=torch.float64)
    return aff.to(device=device, dtype=dtype).requires_grad_(requires_grad)


def affinity_samples(device):
    shapes = [((2, 4, 9, 10), 3), ((1, 3, 5, 7), 2), ((1, 5, 6, 13), 5)]
    for dtype in float_dtypes(device):
        for i, (shape, radius) in enumerate(shapes):
            feat = torch.randn(shape, dtype=torch.float64).to(device=device, dtype=dtype)
            if i == 2:  # strides other than contiguous
                feat = feat.to(memory_format=torch.channels_last)
            yield f"{dtype}-{shape}-r{radius}", (feat.requires_grad_(i != 1), radius)


def test_pairwise_affinity(device):
    for name, args in affinity_samples(device):
        try:
            torch.library.opcheck(OPS.pairwise_affinity.default, args)
            feat, radius = args
            aff = OPS.pairwise_affinity(feat.detach(), radius)
            torch.library.opcheck(
                OPS.pairwise_affinity_backward.default,
                (torch.rand_like(aff), feat.detach(), aff, radius),
            )
        except Exception as exc:
            raise AssertionError(f"sample {name} on {device}") from exc


def pair_loss_samples(device):
    cases = [((2, 7, 9), 3, 0), ((2, 7, 9), 3, 1), ((1, 4, 5), 2, 1), ((1, 6, 10), 5, 0)]
    for dtype in float_dtypes(device):
        for i, (shape, radius, region) in enumerate(cases):
            b, h, w = shape
            label_dtype = torch.int32 if i == 1 else torch.uint8
            aff = aff_on(device, b, radius, h, w, dtype, requires_grad=i != 2)
            labels = labels_on(device, b, h, w, label_dtype)
            yield f"{dtype}-{shape}-r{radius}-region{region}", (aff, labels, radius, region)


def test_pair_loss(device):
    for name, args in pair_loss_samples(device):
        try:
            torch.library.opcheck(OPS.pair_loss.default, args)
            aff, labels, radius, region = args
            counts = OPS.pair_loss(aff.detach(), labels, radius, region)[4]
            one = aff.new_ones(())
            for grads in ((one, None, None, None), (None, one, 2 * one, -one), (one,) * 4):
                torch.library.opcheck(
                    OPS.pair_loss_backward.default,
                    (*grads, counts, aff.detach(), labels, radius, region),
                )
        except Exception as exc:
            raise AssertionError(f"sample {name} on {device}") from exc


def test_pair_classes(device):
    for shape, radius, region, dtype in [
        ((2, 7, 9), 3, 0, torch.uint8),
        ((1, 5, 6), 2, 1, torch.int64),
        ((2, 6, 10), 5, 1, torch.uint8),
    ]:
        labels = labels_on(device, *shape, dtype=dtype)
        torch.library.opcheck(OPS.pair_classes.default, (labels, radius, region))


def test_random_walk(device):
    # the walk has no autograd (affext.random_walk detaches its inputs): no requires_grad
    for (b, c, h, w), radius, region, iterations, dtype in [
        ((1, 3, 6, 9), 3, 0, 4, torch.float32),
        ((2, 2, 7, 8), 2, 1, 3, torch.float64),
        ((1, 4, 6, 10), 5, 0, 2, torch.float32),
    ]:
        cam = torch.rand(b, c, h, w, dtype=dtype, device=device)
        aff = aff_on(device, b, radius, h, w, dtype)
        torch.library.opcheck(OPS.random_walk.default, (cam, aff, 8.0, iterations, radius, region))


def par_samples(device):
    """(imgs, masks, dilations, num_iter) of PAR: odd sizes, dilations beyond the map, a zero
    channel, every dtype the kernels take (half and bfloat16 on the CPU as well)."""
    cases = [((1, 3, 7, 9), 2, [1, 3], 2), ((2, 3, 5, 6), 3, [2, 9], 1), ((1, 1, 4, 1), 1, [1], 3)]
    picks = [(torch.float32, i) for i in range(3)]
    picks += [(torch.float64, 0), (torch.float16, 1), (torch.bfloat16, 2)]
    for dtype, i in picks:
        shape, c, dilations, num_iter = cases[i]
        b, _, h, w = shape
        imgs = torch.rand(shape, dtype=torch.float64).to(device=device, dtype=dtype)
        masks = torch.rand(b, c, h, w, dtype=torch.float64).to(device=device, dtype=dtype)
        if i == 1:
            masks[0, 1] = 0
        masks.requires_grad_(dtype in FULL_FLOATS)
        yield f"{dtype}-{shape}-{dilations}", (imgs, masks, dilations, num_iter)


def test_par(device):
    for name, (imgs, masks, dilations, num_iter) in par_samples(device):
        try:
            torch.library.opcheck(OPS.par_weights.default, (imgs, dilations, 0.3, 0.01))
            weights = OPS.par_weights(imgs, dilations, 0.3, 0.01)
            args = (masks, weights, dilations, num_iter)
            torch.library.opcheck(OPS.par_refine.default, args)
            torch.library.opcheck(OPS.par_refine_backward.default, args)
        except Exception as exc:
            raise AssertionError(f"sample {name} on {device}") from exc
