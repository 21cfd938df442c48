"""The ops and the stages' worker processes where users push them: second derivatives,
Ctrl-C during a long walk, a killed parent."""

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import affext
from affext.reference.affinity import psa_affinity
from affext.reference.pair_loss import psa_affinity_labels, psa_pair_loss

OPS = torch.ops.affext
ROOT = Path(__file__).resolve().parents[1]
walk_module = importlib.import_module("affext.ops.random_walk")


def python_child(code: str, **kwargs) -> subprocess.Popen:
    """A Python process running CODE with this checkout's affext, one torch thread."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, text=True, **kwargs)


# ---- second derivatives (issue: double backward gave zeros with a warning) ------------------


def double_grad(affinity, loss_of, feat):
    """d/dfeat of a gradient penalty: |d loss / d feat|^2 + <d loss / d feat, feat>."""
    feat = feat.detach().requires_grad_()
    (grad,) = torch.autograd.grad(loss_of(affinity(feat)), feat, create_graph=True)
    (second,) = torch.autograd.grad((grad * grad).sum() + (grad * feat).sum(), feat)
    return second


@pytest.mark.parametrize("radius,shape", [(2, (2, 3, 5, 7)), (3, (1, 4, 7, 9))])
def test_affinity_second_derivative_equals_psa(radius, shape):
    feat = torch.randn(shape, dtype=torch.float64)
    n_from = psa_affinity(feat, radius).shape[-1]
    weights = torch.randn(shape[0], len(affext.neighborhood_offsets(radius)), n_from).double()
    ours = double_grad(
        lambda f: affext.psa_layout(affext.pairwise_affinity(f, radius), radius),
        lambda a: (a * weights).sum(),
        feat,
    )
    ref = double_grad(lambda f: psa_affinity(f, radius), lambda a: (a * weights).sum(), feat)
    assert ref.abs().max() > 0.1  # the dense formulation's second derivative is not zero
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("radius,shape,fast", [(2, (1, 2, 3, 5), False), (3, (2, 2, 4, 6), True)])
def test_affinity_gradgradcheck_float64(radius, shape, fast):
    feat = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda f: affext.pairwise_affinity(f, radius), (feat,), fast_mode=fast
    )


def test_pair_loss_second_derivative_equals_psa():
    radius, b, c, h, w = 3, 2, 3, 7, 9
    values = torch.tensor([0, 0, 1, 2, 255])
    labels = values[torch.randint(0, len(values), (b, h, w))].to(torch.uint8)
    masks = psa_affinity_labels(labels.long(), radius)
    feat = torch.randn(b, c, h, w, dtype=torch.float64)
    ours = double_grad(
        lambda f: affext.pairwise_affinity(f, radius),
        lambda a: affext.pair_loss(a, labels, radius, "psa").loss,
        feat,
    )
    ref = double_grad(
        lambda f: psa_affinity(f, radius), lambda a: psa_pair_loss(a, *masks)["loss"], feat
    )
    assert ref.abs().max() > 1e-3
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("region", ["psa", "full"])
def test_pair_loss_gradgradcheck_float64(region):
    radius = 2
    values = torch.tensor([0, 0, 1, 2, 3, 255])
    labels = values[torch.randint(0, len(values), (2, 4, 5))].to(torch.uint8)
    aff = (0.05 + 0.9 * torch.rand(2, 4, 4, 5, dtype=torch.float64)).requires_grad_()

    def parts(a):
        out = affext.pair_loss(a, labels, radius, region)
        return out.loss, out.bg_loss, out.fg_loss, out.neg_loss

    def some_parts(a):  # the backward then gets None for the loss and fg_loss
        out = affext.pair_loss(a, labels, radius, region)
        return 2 * out.bg_loss - out.neg_loss

    assert torch.autograd.gradgradcheck(parts, (aff,), fast_mode=True)
    assert torch.autograd.gradgradcheck(some_parts, (aff,), fast_mode=True)


def test_backward_ops_opcheck_with_gradients():
    radius = 2
    feat = torch.randn(1, 3, 4, 5, dtype=torch.float64)
    aff = OPS.pairwise_affinity(feat, radius)
    args = tuple(t.requires_grad_() for t in (torch.rand_like(aff), feat.clone(), aff.clone()))
    torch.library.opcheck(OPS.pairwise_affinity_backward.default, (*args, radius))

    labels = torch.tensor([0, 1, 2, 255])[torch.randint(0, 4, (1, 4, 5))].to(torch.uint8)
    aff = (0.05 + 0.9 * torch.rand_like(aff)).requires_grad_()
    counts = OPS.pair_loss(aff.detach(), labels, radius, 1)[4]
    one = torch.ones((), dtype=torch.float64, requires_grad=True)
    grads = (one, None, 2 * one, None)
    torch.library.opcheck(OPS.pair_loss_backward.default, (*grads, counts, aff, labels, radius, 1))


# ---- Ctrl-C during a long walk (issue: 10**8 steps ran on 30 s after SIGINT) ------------------


def blocky_walk_inputs(b, c, h, w, dtype, live):
    feat = torch.nn.functional.interpolate(torch.randn(b, 8, h // 3, w // 3), size=(h, w))
    aff = affext.pairwise_affinity(3 * feat + 0.2 * torch.randn(b, 8, h, w), 5).to(dtype)
    cam = torch.rand(b, c, h, w, dtype=dtype)
    cam[:, [i for i in range(c) if i not in live]] = 0
    return cam, aff


@pytest.mark.parametrize(
    "path,dtype,region",
    [
        ("default", torch.float32, "psa"),
        ("default", torch.float64, "full"),
        ("portable", torch.float32, "full"),
        ("portable", torch.float64, "psa"),
    ],
)
def test_walk_in_chunks_is_one_call_bitwise(path, dtype, region, monkeypatch):
    if path == "portable":
        monkeypatch.setenv("AFFEXT_WALK_CPU_PATH", "portable")
    cam, aff = blocky_walk_inputs(2, 6, 14, 17, dtype, live={0, 2, 3, 5})
    one_call = OPS.random_walk(cam, aff, 8.0, 40, 5, affext.neighborhood.region_code(region))
    calls = []
    op = walk_module._op
    monkeypatch.setattr(walk_module, "_op", lambda *args: calls.append(args[3]) or op(*args))
    monkeypatch.setattr(walk_module, "FIRST_CHUNK", 3)
    monkeypatch.setattr(walk_module, "CHUNK_SECONDS", 1e-9)  # then one step a call
    chunked = affext.random_walk(cam, aff, 8.0, 40, 5, region)
    assert calls == [3] + [1] * 37
    assert chunked.dtype == one_call.dtype and torch.equal(chunked, one_call)
    monkeypatch.setattr(walk_module, "CHUNK_SECONDS", 1e9)  # chunks of 8 times the last one
    calls.clear()
    assert torch.equal(affext.random_walk(cam, aff, 8.0, 40, 5, region), one_call)
    assert calls == [3, 24, 13]


def test_psa_walk_is_one_kernel_call(monkeypatch):
    cam, aff = blocky_walk_inputs(1, 3, 12, 12, torch.float32, live={0, 1, 2})
    calls = []
    op = walk_module._op
    monkeypatch.setattr(walk_module, "_op", lambda *args: calls.append(args[3]) or op(*args))
    affext.random_walk(cam, aff, 8.0, 256)
    assert calls == [256]


def test_ctrl_c_stops_a_long_walk():
    child = python_child(
        "import torch, affext\n"
        "cam, aff = torch.rand(1, 3, 40, 40), torch.rand(1, 34, 40, 40)\n"
        "print('walking', flush=True)\n"
        "affext.random_walk(cam, aff, 8.0, 10**8)\n",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout.readline() == "walking\n"
        time.sleep(1.5)  # well into the walk (hours long)
        assert child.poll() is None
        child.send_signal(signal.SIGINT)
        start = time.monotonic()
        _, err = child.communicate(timeout=15)
        seconds = time.monotonic() - start
    finally:
        child.kill()
        child.wait()
    assert "KeyboardInterrupt" in err
    assert seconds < 3, f"the walk went on {seconds:.1f} s after SIGINT"
