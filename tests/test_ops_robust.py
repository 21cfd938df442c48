"""The ops and the stages' worker processes where users push them: second derivatives,
Ctrl-C during a long walk, a killed parent."""

import importlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import small_voc

import affext
from affext.data import VOCDataset, read_id_list
from affext.files import save_score_dict
from affext.reference.affinity import psa_affinity
from affext.reference.pair_loss import psa_affinity_labels, psa_pair_loss

OPS = torch.ops.affext
ROOT = Path(__file__).resolve().parents[1]
walk_module = importlib.import_module("affext.ops.random_walk")


def first_line(child: subprocess.Popen, seconds: float = 120) -> str:
    """The child's first line of output; a child that hangs instead is killed (and fails)."""
    if not select.select([child.stdout], [], [], seconds)[0]:
        for pid in children(child.pid):
            os.kill(pid, signal.SIGKILL)
        child.kill()
        child.wait()
        pytest.fail(f"the child printed nothing in {seconds} s")
    return child.stdout.readline()


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
    # The child starts with Python's own Ctrl-C handling, as from a terminal, whatever the
    # test runner's process has done with SIGINT (an ignored signal stays ignored in a child).
    child = python_child(
        "import signal, torch, affext\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])\n"
        "cam, aff = torch.rand(1, 3, 40, 40), torch.rand(1, 34, 40, 40)\n"
        "print('walking', flush=True)\n"
        "affext.random_walk(cam, aff, 8.0, 10**8)\n",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert first_line(child) == "walking\n"
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


# ---- worker processes die with their parent (issue: orphans alive 20+ minutes after kill -9) -


def children(pid: int) -> set[int]:
    """The live (not zombie) processes whose parent is pid."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of pids still running (a zombie has ended)."""
    running = set()
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                running.add(pid)
        except OSError:
            pass
    return running


def kill_and_wait_for(child: subprocess.Popen, workers: set[int], seconds: float) -> set[int]:
    """SIGKILL child; the workers still alive `seconds` later (killed then, so that none is
    left behind by a failing test)."""
    child.kill()
    child.wait()
    deadline = time.monotonic() + seconds
    while alive(workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = alive(workers)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


pytestmark_linux = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


@pytestmark_linux
def test_loader_workers_blocked_on_a_full_pipe_die_with_their_parent():
    # Workers whose batches (numpy arrays, pickled through the pipe) fill the pipe to a parent
    # that no longer reads: torch's own parent check cannot end them, they block on the pipe.
    child = python_child(
        "import time, numpy as np\n"
        "from torch.utils.data import DataLoader\n"
        "from affext.stages.common import die_with_parent\n"
        "class Big:\n"
        "    def __len__(self): return 100\n"
        "    def __getitem__(self, i): return np.ones(1 << 20, np.uint8)\n"
        "loader = DataLoader(Big(), batch_size=None, num_workers=2, collate_fn=lambda x: x,\n"
        "                    worker_init_fn=die_with_parent)\n"
        "batches = iter(loader)\n"
        "next(batches)\n"
        "print('loading', flush=True)\n"
        "time.sleep(600)\n",
        stdout=subprocess.PIPE,
    )
    assert first_line(child) == "loading\n"
    workers = children(child.pid)
    assert len(workers) == 2
    time.sleep(0.5)  # their next batches fill the pipe
    assert not kill_and_wait_for(child, workers, 3)


@pytestmark_linux
def test_worker_forked_from_a_passing_thread_outlives_it_not_its_process():
    # PR_SET_PDEATHSIG fires when the forking *thread* ends: a pool started from a thread that
    # ends must keep its worker while the process lives, and lose it when the process dies.
    child = python_child(
        "import multiprocessing, os, threading, time\n"
        "from affext.stages.common import die_with_parent\n"
        "def start():\n"
        "    global pool, first\n"
        "    pool = multiprocessing.get_context('fork').Pool(1, die_with_parent)\n"
        "    first = pool.apply(os.getpid)\n"
        "thread = threading.Thread(target=start)\n"
        "thread.start(); thread.join()\n"
        "time.sleep(1.0)\n"
        "print(first, pool.apply(os.getpid), flush=True)\n"
        "time.sleep(600)\n",
        stdout=subprocess.PIPE,
    )
    first, worker = map(int, first_line(child).split())
    assert worker == first  # the same worker, alive after its thread ended
    assert worker in children(child.pid)
    assert not kill_and_wait_for(child, {worker}, 3)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A synthetic VOC of 4 images and psa-format CAMs of their classes."""
    voc = small_voc(tmp_path_factory.mktemp("voc"), 3, 1, size=(40, 48))
    ids = read_id_list(voc / "ImageSets/Segmentation/trainval.txt")
    cam_dir = tmp_path_factory.mktemp("cam")
    data = VOCDataset(voc)
    rng = np.random.default_rng(0)
    for i in ids:
        h, w = data.load_mask(i).shape
        classes = np.nonzero(data.image_labels(i))[0]
        cams = {int(c): rng.random((h, w), np.float32) for c in classes}
        save_score_dict(cam_dir / f"{i}.npy", cams)
    return voc, ids, cam_dir


@pytestmark_linux
def test_make_rw_workers_and_dcrf_processes_die_with_a_killed_stage(tiny_run, tmp_path):
    # Both kinds are forked from the stage's main thread: the kernel ends them (the parent
    # check is slowed down here to show it).
    voc, ids, cam_dir = tiny_run
    child = python_child(
        "import importlib, time\n"
        "from affext.models import AffinityNet, build_backbone\n"
        "from affext import workers\n"
        "workers.PARENT_CHECK_SECONDS = 600  # so that only PR_SET_PDEATHSIG can end them\n"
        "stage = importlib.import_module('affext.stages.make_rw')\n"
        "stage.load_aff_net = lambda p, b, d: AffinityNet(build_backbone('tiny')).eval()\n"
        "def stuck(*args):\n"
        "    print('walking', flush=True)\n"
        "    time.sleep(600)\n"
        "stage.walk_batch = stuck\n"
        "from affext.stages.crf import CRFConfig\n"
        "cfg = stage.MakeRwConfig(backbone='tiny', device='cpu', num_workers=2, crf_workers=1,\n"
        "                         batch_size=1, crf=CRFConfig(backend='pydensecrf'))\n"
        f"stage.make_rw({str(voc)!r}, {ids!r}, {str(cam_dir)!r}, 'unused', "
        f"{str(tmp_path)!r}, cfg, progress=False)\n",
        stdout=subprocess.PIPE,
    )
    assert first_line(child) == "walking\n"
    workers = children(child.pid)
    assert len(workers) == 3  # two loader workers, one dCRF process
    assert not kill_and_wait_for(child, workers, 3)
