"""The stages' two dCRF backends on the synthetic set: affext.dense_crf in the stage's own
process (the default) gives pydensecrf's labels (the reference, run in its processes) in
make-aff-labels, make-rw and make-seg; it starts no process; the pipeline runs without
pydensecrf installed, and asking for it then says which extra to install."""

from __future__ import annotations

import importlib
import importlib.util
import json
import multiprocessing.process
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cams_from_masks, small_voc

from affext.data import load_label_png
from affext.extras import MissingExtraError
from affext.files import load_score_dict
from affext.models import AffinityNet, build_backbone
from affext.models.seg import SegNet
from affext.stages.aff_labels import AffLabelsConfig, make_aff_labels
from affext.stages.crf import CRFConfig

# the modules (affext.stages re-exports their functions under the same names)
make_rw_module = importlib.import_module("affext.stages.make_rw")
make_seg_module = importlib.import_module("affext.stages.make_seg")

FAST = dict(device="cpu", num_workers=0)
BACKENDS = ("affext", "pydensecrf")
needs_pydensecrf = pytest.mark.skipif(
    importlib.util.find_spec("pydensecrf") is None, reason="pydensecrf (crf-reference) missing"
)
# a working size below most images' (72 to 88 px a side): the dCRF there, labels brought up
SMALL = 80


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return small_voc(tmp_path_factory.mktemp("voc"), 5, 1, size=(72, 88), seed=4)


@pytest.fixture(scope="module")
def cam_dir(voc, ids, tmp_path_factory) -> Path:
    return cams_from_masks(voc, ids, tmp_path_factory.mktemp("cams"), seed=1)


@pytest.fixture
def random_nets(monkeypatch):
    """Seeded tiny networks for make-rw and make-seg (checkpoints are tested elsewhere)."""

    def aff_net(path, backbone, device):
        torch.manual_seed(7)
        return AffinityNet(build_backbone("tiny")).eval().to(device)

    def seg_net(path, backbone, num_classes, device):
        torch.manual_seed(8)
        net = SegNet(build_backbone("tiny"), num_classes, channels=16, rates=(1, 2, 3))
        return net.eval().to(device)

    monkeypatch.setattr(make_rw_module, "load_aff_net", aff_net)
    monkeypatch.setattr(make_seg_module, "load_seg_net", seg_net)


def crf(backend: str) -> CRFConfig:
    return CRFConfig(backend=backend)


def run_make_rw(voc, ids, cam_dir, out: Path, backend: str, long_side=None, crf_workers=2):
    cfg = make_rw_module.MakeRwConfig(
        backbone="tiny",
        iterations=16,
        batch_size=2,
        long_side=long_side,
        crf_workers=crf_workers,
        crf=crf(backend),
        **FAST,
    )
    return make_rw_module.make_rw(voc, ids, cam_dir, "unused", out, cfg, progress=False)


def run_make_seg(voc, ids, out: Path, backend: str, long_side=None, crf_workers=2):
    cfg = make_seg_module.MakeSegConfig(
        backbone="tiny",
        scales=(1.0, 0.5),
        long_side=long_side,
        crf_workers=crf_workers,
        crf=crf(backend),
        **FAST,
    )
    return make_seg_module.make_seg(voc, ids, "unused", out, cfg, progress=False)


def agreement(a: Path, b: Path, ids) -> float:
    """The share of pixels on which the label PNGs of folders a and b agree, over all ids."""
    same = total = 0
    for i in ids:
        x, y = load_label_png(a / f"{i}.png"), load_label_png(b / f"{i}.png")
        assert x.shape == y.shape
        same += int((x == y).sum())
        total += x.size
    return same / total


def assert_backends_agree(out: dict[str, Path], plain: str, refined: str, ids) -> None:
    """The stage's outputs of both backends: `plain` (no dCRF) byte-identical, `refined`
    labels equal on >= 99.9% of pixels, and the dCRF not a no-op (it moved some labels)."""
    for i in ids:
        mine, ref = (out[b] / plain / f"{i}.png" for b in BACKENDS)
        assert mine.read_bytes() == ref.read_bytes(), f"{plain}/{i}.png"
    share = agreement(out["affext"] / refined, out["pydensecrf"] / refined, ids)
    changed = 1 - agreement(out["affext"] / plain, out["affext"] / refined, ids)
    print(f"{refined}: labels agree on {share:.6f} of pixels; the dCRF changed {changed:.4f}")
    assert share >= 0.999
    assert changed > 0


@needs_pydensecrf
def test_aff_labels_agree_with_pydensecrf(voc, ids, cam_dir, tmp_path):
    out = {}
    for backend in BACKENDS:
        cfg = AffLabelsConfig(**FAST, crf_workers=2, crf=crf(backend))
        out[backend] = make_aff_labels(voc, ids, cam_dir, tmp_path / backend, cfg, progress=False)
    worst, same, total, moved = 0.0, 0, 0, 0
    for name in ("la", "ha"):
        for i in ids:
            mine = load_score_dict(out["affext"] / name / f"{i}.npy")
            ref = load_score_dict(out["pydensecrf"] / name / f"{i}.npy")
            assert sorted(mine) == sorted(ref) and len(ref) >= 2
            a, b = (
                np.stack([mine[k] for k in sorted(mine)]),
                np.stack([ref[k] for k in sorted(ref)]),
            )
            assert a.dtype == np.float32 and a.shape == b.shape
            worst = max(worst, float(np.abs(a - b).max()))
            same += int((a.argmax(0) == b.argmax(0)).sum())
            total += a[0].size
            moved += int((b.max(0) > 0.99).sum())
    print(f"la/ha: max |affext - pydensecrf| {worst:.2e}, argmax agrees on {same}/{total}")
    assert worst <= 1e-5
    assert same / total >= 0.999
    assert moved > 0  # not trivial: the dCRF made some pixels confident


@needs_pydensecrf
@pytest.mark.parametrize("long_side", [None, SMALL], ids=["full-size", "working-size"])
def test_make_rw_crf_labels_agree_with_pydensecrf(
    voc, ids, cam_dir, tmp_path, random_nets, long_side
):
    out = {b: run_make_rw(voc, ids, cam_dir, tmp_path / b, b, long_side) for b in BACKENDS}
    assert_backends_agree(out, "rw", "rw_crf", ids)
    records = [make_rw_module.load_throughput(out[b]) for b in BACKENDS]
    assert [(r["crf_backend"], r["crf_workers"]) for r in records] == [
        ("affext", 0),
        ("pydensecrf", 2),
    ]


@needs_pydensecrf
@pytest.mark.parametrize("long_side", [None, SMALL], ids=["full-size", "working-size"])
def test_make_seg_crf_labels_agree_with_pydensecrf(voc, ids, tmp_path, random_nets, long_side):
    out = {b: run_make_seg(voc, ids, tmp_path / b, b, long_side) for b in BACKENDS}
    assert_backends_agree(out, "seg", "seg_crf", ids)


@pytest.fixture
def no_processes(monkeypatch):
    """Starting any process (a pool's, a DataLoader worker) fails."""

    def refuse(self):
        raise AssertionError(f"a process was started: {self!r}")

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)


def test_the_affext_backend_starts_no_process(
    voc, ids, cam_dir, tmp_path, random_nets, no_processes
):
    # crf_workers asks for processes: only pydensecrf's path would start them
    cfg = AffLabelsConfig(**FAST, crf_workers=2)
    make_aff_labels(voc, ids, cam_dir, tmp_path / "aff", cfg, progress=False)
    run_make_rw(voc, ids[:3], cam_dir, tmp_path / "rw", "affext")
    run_make_seg(voc, ids[:3], tmp_path / "seg", "affext")
    assert len(list((tmp_path / "aff" / "ha").glob("*.npy"))) == len(ids)
    assert len(list((tmp_path / "rw" / "rw_crf").glob("*.png"))) == 3
    assert len(list((tmp_path / "seg" / "seg_crf").glob("*.png"))) == 3
    # the patch works: the reference's pool does start processes
    if importlib.util.find_spec("pydensecrf") is not None:
        cfg = AffLabelsConfig(**FAST, crf_workers=2, crf=crf("pydensecrf"))
        with pytest.raises(AssertionError, match="a process was started"):
            make_aff_labels(voc, ids, cam_dir, tmp_path / "ref", cfg, progress=False)


@pytest.fixture
def without_pydensecrf(monkeypatch):
    """pydensecrf not installed: importing it fails (None in sys.modules)."""
    for name in ("pydensecrf", "pydensecrf.densecrf", "pydensecrf.utils"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError):
        import pydensecrf.densecrf  # noqa: F401


def test_the_pipeline_runs_without_pydensecrf(
    voc, ids, cam_dir, tmp_path, random_nets, without_pydensecrf
):
    cfg = AffLabelsConfig(**FAST)
    aff = make_aff_labels(voc, ids, cam_dir, tmp_path / "aff", cfg, progress=False)
    for i in ids:
        la = load_score_dict(aff / "la" / f"{i}.npy")
        np.testing.assert_allclose(sum(la.values()), 1.0, atol=1e-5)  # marginals
    rw = run_make_rw(voc, ids, cam_dir, tmp_path / "rw", "affext")
    assert len(list((rw / "rw_crf").glob("*.png"))) == len(ids)
    # the reference asked for: the extra named, before any work
    extra = (
        "pydensecrf2, which comes with the crf-reference extra: pip install 'affext[crf-reference]'"
    )
    cfg = AffLabelsConfig(**FAST, crf=crf("pydensecrf"))
    with pytest.raises(MissingExtraError, match="needs " + extra.replace("[", r"\[")):
        make_aff_labels(voc, ids, cam_dir, tmp_path / "ref", cfg, progress=False, overwrite=True)
    assert not list((tmp_path / "ref" / "la").glob("*"))
    with pytest.raises(MissingExtraError, match="crf-reference"):
        run_make_rw(voc, ids, cam_dir, tmp_path / "ref_rw", "pydensecrf")
    with pytest.raises(MissingExtraError, match="crf-reference"):
        run_make_seg(voc, ids, tmp_path / "ref_seg", "pydensecrf")


@needs_pydensecrf
def test_a_work_directory_resumes_under_the_other_backend(voc, ids, cam_dir, tmp_path):
    out = tmp_path / "aff"
    make_aff_labels(voc, ids[:2], cam_dir, out, AffLabelsConfig(**FAST), progress=False)
    kept = (out / "la" / f"{ids[0]}.npy").stat().st_mtime_ns
    cfg = AffLabelsConfig(**FAST, crf_workers=0, crf=crf("pydensecrf"))
    make_aff_labels(voc, ids, cam_dir, out, cfg, progress=False)  # no refusal
    assert (out / "la" / f"{ids[0]}.npy").stat().st_mtime_ns == kept
    assert len(list((out / "ha").glob("*.npy"))) == len(ids)
    assert (
        json.loads((out / "make-aff-labels.config.json").read_text())["config"]["crf"]["backend"]
        == "pydensecrf"
    )


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="crf backend must be one of 'affext', 'pydensecrf'"):
        CRFConfig(backend="densecrf")


@needs_pydensecrf
def test_the_command_line_picks_the_backend(voc, ids, cam_dir, tmp_path):
    from affext.cli import main

    lst = tmp_path / "ids.txt"
    lst.write_text("\n".join(ids[:2]) + "\n")
    out = tmp_path / "aff"
    argv = ["make-aff-labels", "--voc-root", str(voc), "--list", str(lst), "--cam-dir"]
    argv += [str(cam_dir), "--out", str(out), "--quiet", "--device", "cpu", "--workers", "0"]
    assert main([*argv, "--crf-backend", "pydensecrf", "--crf-workers", "0"]) == 0
    record = json.loads((out / "make-aff-labels.config.json").read_text())["config"]
    assert record["crf"]["backend"] == "pydensecrf"
    assert (record["crf_workers"], record["num_workers"], record["device"]) == (0, 0, "cpu")
    assert len(list((out / "la").glob("*.npy"))) == 2
