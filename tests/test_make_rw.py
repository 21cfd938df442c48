"""make-rw's pipeline (device work overlapped with threads, and pydensecrf's processes)
against a sequential loop written here: byte-identical PNGs with either dCRF backend, resume,
bounded memory, errors, Ctrl-C."""

import importlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import cams_from_masks, requires_cuda
from PIL import Image

import affext
from affext.data import SynthConfig, VOCDataset, make_synthetic_voc
from affext.data.transforms import normalize, resize_maps, to_long_side
from affext.data.voc import save_label_png
from affext.files import load_score_dict
from affext.models import AffinityNet, build_backbone
from affext.stages.crf import CRFConfig, crf_inference

# the module, which the package's make_rw function shadows
stage = importlib.import_module("affext.stages.make_rw")
ITERATIONS = 16


def config(backend="affext", **kw):
    base = dict(backbone="tiny", device="cpu", num_workers=0, iterations=ITERATIONS, batch_size=2)
    return stage.MakeRwConfig(**{**base, "crf": CRFConfig(backend=backend), **kw})


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    cfg = SynthConfig(num_train=6, num_val=3, min_size=66, max_size=80, seed=3)
    return make_synthetic_voc(tmp_path_factory.mktemp("voc"), cfg, progress=False)


@pytest.fixture(scope="module")
def cam_dir(voc, ids, tmp_path_factory) -> Path:
    return cams_from_masks(voc, ids, tmp_path_factory.mktemp("cams"))


def aff_net() -> AffinityNet:
    torch.manual_seed(7)
    return AffinityNet(build_backbone("tiny")).eval()


@pytest.fixture
def random_net(monkeypatch):
    """The stage's AffinityNet: a seeded tiny one (the checkpoint format is tested elsewhere)."""
    monkeypatch.setattr(stage, "load_aff_net", lambda path, backbone, device: aff_net().to(device))


def sequential_reference(voc_root, ids, cam_dir, out: Path, cfg, device="cpu") -> Path:
    """make-rw as one loop, docs/method.md §5 step by step: the stage's batches (images of
    one padded working size, in order of first appearance, cut into batch_size chunks), then
    per image upsampling, argmax and the dCRF, written in turn."""
    voc = VOCDataset(voc_root, label_source="mask")
    model = aff_net().to(device)

    def work_size(i):
        w, h = to_long_side(voc.load_pil(i), cfg.long_side).size
        return h, w

    groups: dict = {}
    for i in ids:
        h, w = work_size(i)
        groups.setdefault((-(-h // 8) * 8, -(-w // 8) * 8), []).append(i)
    chunks = [
        m[k : k + cfg.batch_size] for m in groups.values() for k in range(0, len(m), cfg.batch_size)
    ]
    for chunk in chunks:
        xs, cams, metas = [], [], []
        for i in chunk:
            pil = voc.load_pil(i)
            rgb = np.asarray(pil)
            work = np.asarray(to_long_side(pil, cfg.long_side))
            h, w = work.shape[:2]
            cam = load_score_dict(cam_dir / f"{i}.npy")
            fg = np.zeros((20,) + rgb.shape[:2], np.float32)
            for k, v in cam.items():
                fg[k] = v
            fg = resize_maps(fg, (h, w))
            bg = np.power(np.clip(1.0 - fg.max(axis=0), 0.0, 1.0), cfg.alpha).astype(np.float32)
            hp, wp = -(-h // 8) * 8, -(-w // 8) * 8
            full = np.zeros((21, hp, wp), np.float32)
            full[0, :h, :w] = bg
            full[1:, :h, :w] = fg
            cams.append(full.reshape(21, hp // 8, 8, wp // 8, 8).mean(axis=(2, 4)))
            x = np.zeros((3, hp, wp), np.float32)
            x[:, :h, :w] = normalize(work)
            xs.append(x)
            metas.append((i, rgb, (h, w), [0] + sorted(k + 1 for k in cam)))
        x = torch.from_numpy(np.stack(xs)).to(device)
        with torch.no_grad():
            aff = model.affinity(x, cfg.radius)
            walked = affext.random_walk(
                torch.from_numpy(np.stack(cams)).to(device),
                aff,
                beta=cfg.beta,
                iterations=cfg.iterations,
                radius=cfg.radius,
                region=cfg.region,
            )
            walked = F.interpolate(walked, size=x.shape[-2:], mode="bilinear", align_corners=False)
        for j, (i, rgb, (h, w), keys) in enumerate(metas):
            scores = walked[j : j + 1, :, :h, :w]
            if (h, w) != rgb.shape[:2]:
                scores = F.interpolate(
                    scores, size=rgb.shape[:2], mode="bilinear", align_corners=False
                )
            scores = scores[0].cpu().numpy()
            save_label_png(out / "rw" / f"{i}.png", np.argmax(scores, axis=0).astype(np.uint8))
            sub = np.maximum(scores[keys], 0.0)
            sub = sub / np.maximum(sub.sum(axis=0, keepdims=True), 1e-5)
            refined = crf_inference(rgb, sub, cfg.crf)
            label = np.asarray(keys, np.uint8)[np.argmax(refined, axis=0)]
            save_label_png(out / "rw_crf" / f"{i}.png", label)
    return out


_references: dict = {}


def reference(voc, ids, cam_dir, tmp_path_factory, long_side=None, backend="affext") -> Path:
    """The sequential loop's outputs, its dCRF with `backend`'s (on the CPU)."""
    key = long_side, backend
    if key not in _references:
        out = tmp_path_factory.mktemp("reference")
        _references[key] = sequential_reference(
            voc, ids, cam_dir, out, config(backend, long_side=long_side)
        )
    return _references[key]


def assert_same_pngs(out: Path, ref: Path, ids, subs=("rw", "rw_crf")) -> None:
    for sub in subs:
        for i in ids:
            assert (out / sub / f"{i}.png").read_bytes() == (ref / sub / f"{i}.png").read_bytes(), (
                f"{sub}/{i}.png"
            )


def stage_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("make-rw")]


def test_reference_is_not_trivial(voc, ids, cam_dir, tmp_path_factory):
    ref = reference(voc, ids, cam_dir, tmp_path_factory)
    labels = [np.array(Image.open(ref / "rw" / f"{i}.png")) for i in ids]
    assert len(set(np.unique(np.concatenate([x.ravel() for x in labels])))) > 2
    assert any(len(np.unique(x)) > 1 for x in labels)  # the walk keeps objects and background
    sizes = {np.array(Image.open(ref / "rw" / f"{i}.png")).shape for i in ids}
    assert len(sizes) > 1  # several batch shapes


@pytest.mark.parametrize(
    "long_side, backend, crf_workers, processes",
    [(None, "pydensecrf", 1, 1), (96, "pydensecrf", 0, 0), (None, "affext", 2, 0)],
    ids=["pydensecrf-processes", "pydensecrf-resized-thread", "affext-in-process"],
)
def test_pipeline_matches_sequential_loop(
    voc,
    ids,
    cam_dir,
    tmp_path_factory,
    tmp_path,
    random_net,
    long_side,
    backend,
    crf_workers,
    processes,
):
    ref = reference(voc, ids, cam_dir, tmp_path_factory, long_side, backend)
    cfg = config(backend, long_side=long_side, crf_workers=crf_workers)
    out = stage.make_rw(voc, ids, cam_dir, "unused", tmp_path, cfg, progress=False)
    assert_same_pngs(out, ref, ids)
    record = stage.load_throughput(out)
    assert record["images"] == len(ids) and record["images_per_s"] > 0
    assert record["device"] == "cpu" and record["crf_backend"] == backend
    assert record["crf_workers"] == processes  # the affext dCRF starts no process
    assert not stage_threads()


def test_resume_redoes_only_missing_images(
    voc, ids, cam_dir, tmp_path_factory, tmp_path, random_net
):
    ref = reference(voc, ids, cam_dir, tmp_path_factory)
    cfg = config(crf_workers=0, write_crf=False)
    stage.make_rw(voc, ids[:4], cam_dir, "unused", tmp_path, cfg, progress=False)
    assert stage.load_throughput(tmp_path)["images"] == 4
    marker = tmp_path / "rw" / f"{ids[0]}.png"
    marker.write_bytes(b"kept")
    stage.make_rw(voc, ids, cam_dir, "unused", tmp_path, cfg, progress=False)
    assert stage.load_throughput(tmp_path)["images"] == len(ids) - 4
    assert marker.read_bytes() == b"kept"
    assert_same_pngs(tmp_path, ref, ids[1:], subs=("rw",))
    assert not (tmp_path / "rw_crf").exists()


def test_pending_images_are_bounded(voc, ids, cam_dir, tmp_path, random_net, monkeypatch):
    """While the PNG writes are stuck, the device stops after `limit` images in flight."""
    release = threading.Event()
    walks = []
    real_save, real_walk = stage.save_label_png, stage.walk_batch

    def stuck_save(path, label):
        release.wait(60)
        real_save(path, label)

    monkeypatch.setattr(stage, "save_label_png", stuck_save)
    monkeypatch.setattr(stage, "walk_batch", lambda *a: walks.append(1) or real_walk(*a))
    cfg = config(batch_size=1, write_crf=False)
    limit = stage._pending_limit(cfg, 0)
    assert limit < len(ids) - 1
    errors = []

    def run():
        try:
            stage.make_rw(voc, ids, cam_dir, "unused", tmp_path, cfg, progress=False)
        except BaseException as exc:  # reported below
            errors.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        deadline = time.monotonic() + 120
        while len(walks) < limit + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # room for a runaway device loop to show itself
        assert len(walks) == limit + 1
        assert not list((tmp_path / "rw").glob("*.png"))
    finally:
        release.set()
        runner.join(60)
    assert not errors and not runner.is_alive()
    assert len(walks) == len(ids) and len(list((tmp_path / "rw").glob("*.png"))) == len(ids)


def test_error_in_a_worker_stops_the_stage(voc, ids, cam_dir, tmp_path, random_net, monkeypatch):
    real_save = stage.save_label_png

    def failing_save(path, label):
        if Path(path).stem == ids[0]:
            raise OSError("No space left on device")
        real_save(path, label)

    monkeypatch.setattr(stage, "save_label_png", failing_save)
    cfg = config(batch_size=1, write_crf=False)
    with pytest.raises(OSError, match="No space left") as raised:
        stage.make_rw(voc, ids, cam_dir, "unused", tmp_path, cfg, progress=False)
    assert f"image '{ids[0]}'" in " ".join(raised.value.__notes__)
    written = list((tmp_path / "rw").glob("*"))
    assert len(written) <= stage._pending_limit(cfg, 0)  # stopped, not run to the end
    assert all(p.suffix == ".png" for p in written)  # no temporaries left
    assert not stage_threads()


def test_ctrl_c_stops_cleanly_and_a_rerun_completes(
    voc, ids, cam_dir, tmp_path_factory, tmp_path, random_net, monkeypatch
):
    ref = reference(voc, ids, cam_dir, tmp_path_factory, backend="pydensecrf")
    real_walk = stage.walk_batch
    calls = []

    def interrupted_walk(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_walk(*args)

    monkeypatch.setattr(stage, "walk_batch", interrupted_walk)
    cfg = config("pydensecrf", crf_workers=1)
    with pytest.raises(KeyboardInterrupt):
        stage.make_rw(voc, ids, cam_dir, "unused", tmp_path, cfg, progress=False)
    assert not stage_threads()
    for sub in ("rw", "rw_crf"):
        files = list((tmp_path / sub).glob("*"))
        assert all(p.suffix == ".png" for p in files)  # complete files only
        assert len(files) <= 2 * cfg.batch_size  # the two walked batches at most
        assert_same_pngs(tmp_path, ref, [p.stem for p in files], subs=(sub,))
    monkeypatch.setattr(stage, "walk_batch", real_walk)
    cfg.crf_workers = 0  # the dCRF processes are tested above; the rerun is quicker without
    stage.make_rw(voc, ids, cam_dir, "unused", tmp_path, cfg, progress=False)
    assert_same_pngs(tmp_path, ref, ids)


@requires_cuda
def test_cuda_pipeline_matches_sequential_loop_on_cuda(voc, ids, cam_dir, tmp_path, random_net):
    ref = sequential_reference(voc, ids, cam_dir, tmp_path / "ref", config("pydensecrf"), "cuda")
    cfg = config("pydensecrf", device="cuda", num_workers=1, crf_workers=2)
    out = stage.make_rw(voc, ids, cam_dir, "unused", tmp_path / "out", cfg, progress=False)
    assert_same_pngs(out, ref, ids)
    assert stage.load_throughput(out)["device"].startswith("cuda")


def test_runs_from_a_script_without_a_main_guard(voc, ids, cam_dir, tmp_path):
    """The dCRF processes must not import the caller's main module again (spawn would)."""
    script = tmp_path / "run.py"
    script.write_text(
        "import importlib, torch\n"
        "from affext.models import AffinityNet, build_backbone\n"
        "stage = importlib.import_module('affext.stages.make_rw')\n"
        "stage.load_aff_net = lambda p, b, d: AffinityNet(build_backbone('tiny')).eval()\n"
        "from affext.stages.crf import CRFConfig\n"
        f"cfg = stage.MakeRwConfig(backbone='tiny', device='cpu', num_workers=0, "
        f"iterations=4, crf_workers=1, crf=CRFConfig(backend='pydensecrf'))\n"
        f"stage.make_rw({str(voc)!r}, {ids[:2]!r}, {str(cam_dir)!r}, 'unused', "
        f"{str(tmp_path / 'out')!r}, cfg, progress=False)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(list((tmp_path / "out" / "rw_crf").glob("*.png"))) == 2
