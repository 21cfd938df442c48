"""Every op fails alike on a bad input eagerly and under FakeTensorMode (torch.compile's
tracing): the same exception type (ValueError for shapes and settings, TypeError for dtypes),
with a message naming the argument. The fake kernels state the launchers' rules
(affext/ops/_fake_checks.py, csrc/*/*_args.cpp); checks of values (NaN scores, labels out of
range) need the data and are eager only (each op's own test file)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import affext
from affext.ops.par import par_refine, par_weights

OPS = torch.ops.affext
I64, U8, F16, BF16, F64 = torch.int64, torch.uint8, torch.float16, torch.bfloat16, torch.float64


# Each builds its inputs when called: real tensors eagerly, fake ones under FakeTensorMode.
def t(*shape, dtype=torch.float32):
    return torch.rand(shape).to(dtype)


def u8(*shape, dtype=U8):
    return torch.zeros(shape, dtype=dtype)


def affinity(feat=None, radius=5):
    return affext.pairwise_affinity(t(1, 4, 9, 9) if feat is None else feat, radius)


def affinity_backward(grad=(1, 12, 5, 6), feat=(1, 2, 5, 6)):
    return OPS.pairwise_affinity_backward(t(*grad), t(*feat), t(1, 12, 5, 6), 3)


def loss(aff=None, labels=None, radius=3, region="psa"):
    aff = t(1, 12, 5, 6) if aff is None else aff
    return affext.pair_loss(aff, u8(1, 5, 6) if labels is None else labels, radius, region)


def loss_backward(grad_fg=None, counts=None, aff=None):
    aff = t(1, 12, 5, 6) if aff is None else aff
    counts = torch.zeros(3, dtype=I64) if counts is None else counts
    return OPS.pair_loss_backward(
        torch.ones(()), None, grad_fg, None, counts, aff, u8(1, 5, 6), 3, 1
    )


def walk(cam=None, aff=None, **kw):
    cam = t(1, 3, 9, 10) if cam is None else cam
    aff = t(1, 34, 9, 10) if aff is None else aff
    return affext.random_walk(cam, aff, **{"iterations": 3, **kw})


def weights(imgs=None, dilations=(1,), w1=0.3, w2=0.01):
    return par_weights(t(1, 3, 5, 6) if imgs is None else imgs, list(dilations), w1, w2)


def refine(
    masks=(1, 2, 5, 6),
    w=(1, 8, 5, 6),
    dilations=(1,),
    num_iter=2,
    dtype=torch.float32,
    wdtype=torch.float32,
    op=par_refine,
):
    """par_refine (which casts the weights to the masks' accumulation dtype), or the op `op`
    on the tensors as given; dtype, wdtype: the masks' and the weights' dtypes."""
    return op(t(*masks, dtype=dtype), t(*w, dtype=wdtype), list(dilations), num_iter)


def crf(image=(1, 8, 10, 3), scores=(1, 3, 8, 10), image_dtype=U8, scores_dtype=None, **kw):
    scores = t(*scores) if scores_dtype is None else u8(*scores, dtype=scores_dtype)
    return affext.dense_crf(u8(*image, dtype=image_dtype), scores, **kw)


# (id, the call, the exception type, the argument its message names)
CASES = [
    # pairwise_affinity
    ("affinity feat dims", lambda: affinity(t(4, 9, 9)), ValueError, "feat"),
    ("affinity feat integer", lambda: affinity(t(1, 4, 9, 9, dtype=I64)), TypeError, "feat"),
    (
        "affinity feat half on the CPU",
        lambda: affinity(t(1, 4, 9, 9, dtype=F16)),
        TypeError,
        "feat",
    ),
    ("affinity no channel", lambda: affinity(t(1, 0, 9, 9)), ValueError, "feat"),
    ("affinity map small", lambda: affinity(t(1, 4, 4, 9)), ValueError, "feat"),
    ("affinity map narrow", lambda: affinity(t(1, 4, 2, 9), 3), ValueError, "feat"),
    ("affinity radius 1", lambda: affinity(radius=1), ValueError, "radius"),
    ("affinity radius float", lambda: affinity(radius=5.0), TypeError, "radius"),
    ("affinity backward grad", lambda: affinity_backward(grad=(1, 11, 5, 6)), ValueError, "grad"),
    ("affinity backward feat", lambda: affinity_backward(feat=(2, 5, 6)), ValueError, "feat"),
    # pair_loss, affinity_labels
    ("pair_loss aff dims", lambda: loss(t(12, 5, 6)), ValueError, "aff"),
    ("pair_loss aff integer", lambda: loss(t(1, 12, 5, 6, dtype=I64)), TypeError, "aff"),
    ("pair_loss aff half on the CPU", lambda: loss(t(1, 12, 5, 6, dtype=BF16)), TypeError, "aff"),
    ("pair_loss labels dims", lambda: loss(labels=u8(5, 6)), ValueError, "labels"),
    ("pair_loss labels float", lambda: loss(labels=t(1, 5, 6)), TypeError, "labels"),
    (
        "pair_loss labels bool",
        lambda: loss(labels=u8(1, 5, 6, dtype=torch.bool)),
        TypeError,
        "labels",
    ),
    ("pair_loss K", lambda: loss(t(1, 4, 5, 6)), ValueError, "aff"),
    ("pair_loss size", lambda: loss(labels=u8(1, 5, 7)), ValueError, "aff"),
    ("pair_loss batch", lambda: loss(t(2, 12, 5, 6)), ValueError, "aff"),
    ("pair_loss map small", lambda: loss(t(1, 12, 2, 6), u8(1, 2, 6)), ValueError, "labels"),
    ("pair_loss region", lambda: loss(region="half"), ValueError, "region"),
    ("pair_loss radius", lambda: loss(radius=17), ValueError, "radius"),
    ("pair_loss backward grad dims", lambda: loss_backward(t(1)), ValueError, "grad_fg_loss"),
    (
        "pair_loss backward grad integer",
        lambda: loss_backward(u8(dtype=I64)),
        TypeError,
        "grad_fg_loss",
    ),
    ("pair_loss backward counts", lambda: loss_backward(counts=u8(3)), ValueError, "counts"),
    ("pair_loss backward K", lambda: loss_backward(aff=t(1, 4, 5, 6)), ValueError, "aff"),
    ("affinity_labels float", lambda: affext.affinity_labels(t(1, 5, 6), 3), TypeError, "labels"),
    ("affinity_labels dims", lambda: affext.affinity_labels(u8(5, 6), 3), ValueError, "labels"),
    (
        "affinity_labels map small",
        lambda: affext.affinity_labels(u8(1, 2, 6), 3),
        ValueError,
        "labels",
    ),
    # random_walk
    ("walk cam dims", lambda: walk(t(3, 9, 10)), ValueError, "cam"),
    ("walk aff dims", lambda: walk(aff=t(34, 9, 10)), ValueError, "aff"),
    ("walk cam integer", lambda: walk(t(1, 3, 9, 10, dtype=I64)), TypeError, "cam"),
    ("walk aff integer", lambda: walk(aff=u8(1, 34, 9, 10)), TypeError, "aff"),
    (
        "walk half on the CPU",
        lambda: walk(t(1, 3, 9, 10, dtype=F16), t(1, 34, 9, 10, dtype=F16)),
        TypeError,
        "cam",
    ),
    ("walk K", lambda: walk(aff=t(1, 33, 9, 10)), ValueError, "aff"),
    ("walk batch", lambda: walk(t(2, 3, 9, 10)), ValueError, "cam"),
    ("walk size", lambda: walk(t(1, 3, 9, 11)), ValueError, "cam"),
    ("walk map small", lambda: walk(t(1, 3, 4, 10), t(1, 34, 4, 10)), ValueError, "aff"),
    ("walk beta 0", lambda: walk(beta=0.0), ValueError, "beta"),
    ("walk iterations 0", lambda: walk(iterations=0), ValueError, "iterations"),
    ("walk iterations float", lambda: walk(iterations=2.5), TypeError, "iterations"),
    ("walk region", lambda: walk(region="half"), ValueError, "region"),
    ("walk radius", lambda: walk(radius=1), ValueError, "radius"),
    # PAR
    ("par_weights imgs dims", lambda: weights(t(1, 3, 5)), ValueError, "imgs"),
    ("par_weights imgs integer", lambda: weights(t(1, 3, 5, 6, dtype=I64)), TypeError, "imgs"),
    ("par_weights no pixel", lambda: weights(t(1, 3, 0, 6)), ValueError, "imgs"),
    ("par_weights w1 0", lambda: weights(w1=0.0), ValueError, "w1"),
    ("par_weights w1 inf", lambda: weights(w1=float("inf")), ValueError, "w1"),
    ("par_weights w2 < 0", lambda: weights(w2=-1.0), ValueError, "w2"),
    ("par_weights dilations 0", lambda: weights(dilations=[0]), ValueError, "dilations"),
    ("par_weights dilations float", lambda: weights(dilations=[1.5]), TypeError, "dilations"),
    ("par_refine masks dims", lambda: refine((2, 5, 6)), ValueError, "masks"),
    ("par_refine weights dims", lambda: refine(w=(8, 5, 6)), ValueError, "weights"),
    ("par_refine masks integer", lambda: refine(dtype=I64, op=OPS.par_refine), TypeError, "masks"),
    ("par_refine K", lambda: refine(dilations=(1, 2)), ValueError, "weights"),
    ("par_refine size", lambda: refine(w=(1, 8, 5, 7)), ValueError, "masks"),
    (
        "par_refine num_iter 0",
        lambda: refine(num_iter=0, op=OPS.par_refine),
        ValueError,
        "num_iter",
    ),
    (
        "par_refine weights dtype",
        lambda: refine(wdtype=F64, op=OPS.par_refine),
        TypeError,
        "weights",
    ),
    (
        "par_refine_backward size",
        lambda: refine(w=(1, 8, 5, 7), op=OPS.par_refine_backward),
        ValueError,
        "grad",
    ),
    (
        "par masks dims",
        lambda: affext.pixel_adaptive_refine(t(1, 3, 5, 6), t(2, 5, 6)),
        ValueError,
        "masks",
    ),
    # dense_crf
    ("crf image dims", lambda: crf(image=(8, 10)), ValueError, "image"),
    ("crf image channels", lambda: crf(image=(1, 8, 10, 2)), ValueError, "image"),
    ("crf image dtype", lambda: crf(image_dtype=torch.float32), TypeError, "image"),
    ("crf scores dims", lambda: crf(scores=(8, 10)), ValueError, "scores"),
    ("crf scores integer", lambda: crf(scores_dtype=I64), TypeError, "scores"),
    ("crf no label", lambda: crf(scores=(1, 0, 8, 10)), ValueError, "scores"),
    ("crf size", lambda: crf(scores=(1, 3, 8, 11)), ValueError, "scores"),
    ("crf batch", lambda: crf(image=(2, 8, 10, 3), scores=(3, 3, 8, 10)), ValueError, "scores"),
    ("crf iterations 0", lambda: crf(iterations=0), ValueError, "iterations"),
    ("crf iterations float", lambda: crf(iterations=2.5), TypeError, "iterations"),
    ("crf gaussian_sxy 0", lambda: crf(gaussian_sxy=0.0), ValueError, "gaussian_sxy"),
    ("crf bilateral_sxy < 0", lambda: crf(bilateral_sxy=-1.0), ValueError, "bilateral_sxy"),
    ("crf bilateral_srgb 0", lambda: crf(bilateral_srgb=0.0), ValueError, "bilateral_srgb"),
    (
        "crf gaussian_compat nan",
        lambda: crf(gaussian_compat=float("nan")),
        ValueError,
        "gaussian_compat",
    ),
    (
        "crf bilateral_compat inf",
        lambda: crf(bilateral_compat=float("inf")),
        ValueError,
        "bilateral_compat",
    ),
    # the lattice keys (64 bits) cannot hold so many cells
    ("crf gaussian keys", lambda: crf(gaussian_sxy=1e-9), ValueError, "gaussian_sxy"),
    ("crf bilateral keys", lambda: crf(bilateral_srgb=1e-3), ValueError, "bilateral_srgb"),
]


# Cases that call a raw op (torch.ops.affext.*, not its Python wrapper) whose kernels are built
# against the stable ABI (csrc/common/stable.h): only std::runtime_error crosses that ABI, so the
# kernel's check raises RuntimeError eagerly, with the same message naming the argument; the
# wrappers run the checks first and keep ValueError / TypeError.
RAW_STABLE = {
    "affinity backward grad",
    "affinity backward feat",
    "pair_loss backward grad dims",
    "pair_loss backward grad integer",
    "pair_loss backward counts",
    "pair_loss backward K",
    "par_refine masks integer",
    "par_refine num_iter 0",
    "par_refine weights dtype",
    "par_refine_backward size",
}


@pytest.mark.parametrize(
    "case,call,exc,name", [(c[0], *c[1:]) for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_bad_input_fails_alike_eagerly_and_traced(case, call, exc, name):
    match = rf"\b{name}\b"
    eager_exc = RuntimeError if case in RAW_STABLE else exc
    with pytest.raises(eager_exc, match=match) as eager:
        call()
    with FakeTensorMode(), pytest.raises(exc, match=match) as fake:
        call()
    assert eager.type is eager_exc and fake.type is exc, (eager.value, fake.value)


def test_the_lattice_key_bound_is_the_same_eagerly_and_traced():
    # bilateral_srgb across the bound of an 8x10 image (64-bit keys fail below ~1.65)
    refused = []
    for srgb in np.geomspace(1.0, 3.0, 41).tolist():
        try:
            crf(bilateral_srgb=srgb)
            eager = False
        except ValueError:
            eager = True
        try:
            with FakeTensorMode():
                crf(bilateral_srgb=srgb)
            fake = False
        except ValueError:
            fake = True
        assert eager == fake, srgb
        refused.append(eager)
    assert refused[0] and not refused[-1]  # both sides of the bound were tried
