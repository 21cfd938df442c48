"""No silent wrong results and errors a user can act on: foreign CAMs, huge images, stray
temporaries and resumed stage times, one-line CLI errors, training from scratch refused."""

import errno
import importlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import replace_stages, run_args, small_voc
from PIL import Image

from affext import files
from affext.cli import main
from affext.data import DatasetError, VOCDataset, save_label_png
from affext.data.datasets import AffTrainDataset, kept_size
from affext.files import load_score_dict, save_score_dict
from affext.models import AffinityNet, CAMNet, build_backbone, save_checkpoint
from affext.stages.aff_labels import make_aff_labels
from affext.stages.config import RunConfig
from affext.stages.overview import write_overview

make_rw_stage = importlib.import_module("affext.stages.make_rw")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return small_voc(tmp_path_factory.mktemp("voc"), 4, 2, seed=5)


def write_cams(voc: Path, ids, out: Path, keys_of=None) -> Path:
    """CAM files of the images' own classes (or keys_of(image classes) instead), flat 0.5."""
    data = VOCDataset(voc)
    out.mkdir(parents=True, exist_ok=True)
    for i in ids:
        h, w = data.load_image(i).shape[:2]
        keys = [int(c) for c in np.nonzero(data.image_labels(i))[0]]
        if keys_of is not None:
            keys = keys_of(keys)
        save_score_dict(out / f"{i}.npy", {k: np.full((h, w), 0.5, np.float32) for k in keys})
    return out


@pytest.fixture
def random_aff_net(monkeypatch):
    def load(path, backbone, device):
        torch.manual_seed(7)
        return AffinityNet(build_backbone("tiny")).eval().to(device)

    monkeypatch.setattr(make_rw_stage, "load_aff_net", load)


def rw_config(**kw):
    base = dict(backbone="tiny", device="cpu", num_workers=0, iterations=4, crf_workers=0)
    return make_rw_stage.MakeRwConfig(**{**base, **kw})


# -- 3: CAMs whose classes are not the image's -------------------------------------------------
def test_make_rw_refuses_cams_of_classes_the_image_lacks(voc, ids, tmp_path, random_aff_net):
    data = VOCDataset(voc)
    image = ids[0]
    own = [int(c) for c in np.nonzero(data.image_labels(image))[0]]
    others = [c for c in range(data.num_classes) if c not in own][:2]
    cams = write_cams(voc, [image], tmp_path / "cam", lambda keys: others)
    with pytest.raises(DatasetError) as err:
        make_rw_stage.make_rw(
            voc, [image], cams, "unused", tmp_path / "rw", rw_config(), progress=False
        )
    message = str(err.value)
    assert f"{image}.npy" in message and str(others) in message and str(sorted(own)) in message
    assert not list((tmp_path / "rw" / "rw").glob("*.png"))


def test_make_rw_refuses_cam_keys_outside_the_classes(voc, ids, tmp_path, random_aff_net):
    num_classes = VOCDataset(voc).num_classes
    cams = write_cams(voc, ids[:1], tmp_path / "cam", lambda keys: keys + [num_classes])
    with pytest.raises(DatasetError, match=rf"{ids[0]}\.npy.*\[{num_classes}\] outside"):
        make_rw_stage.make_rw(
            voc, ids[:1], cams, "unused", tmp_path / "rw", rw_config(), progress=False
        )


def test_make_rw_takes_the_images_own_cams(voc, ids, tmp_path, random_aff_net):
    cams = write_cams(voc, ids, tmp_path / "cam")
    out = make_rw_stage.make_rw(
        voc, ids, cams, "unused", tmp_path / "rw", rw_config(), progress=False
    )
    assert sorted(p.stem for p in (out / "rw").glob("*.png")) == sorted(ids)


# -- 12: an ImageNet backbone is not trained from scratch unless asked for ---------------------
@pytest.fixture
def fake_run(monkeypatch):
    """pipeline.run replaced by a recorder: these tests are about what the CLI lets through."""
    calls = []

    def run(voc_root, train, evals, workdir, cfg, progress=True, overwrite=False):
        calls.append(cfg)
        return {"stage_seconds": {}}

    monkeypatch.setattr(importlib.import_module("affext.stages.pipeline"), "run", run)
    return calls


@pytest.mark.parametrize("backbone", [None, "resnet38", "resnet50"])
def test_run_refuses_imagenet_backbones_without_weights(voc, tmp_path, capsys, fake_run, backbone):
    extra = [] if backbone is None else ["--backbone", backbone]
    assert main(run_args(voc, tmp_path / "work", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--weights" in err and "--from-scratch" in err
    source = "convert_weights" if backbone in (None, "resnet38") else "torchvision"
    assert source in err
    assert not fake_run and not (tmp_path / "work").exists()


def test_train_stages_refuse_imagenet_backbones_without_weights(voc, tmp_path, capsys):
    """The stage functions refuse (before any work), the CLI reports their error."""
    lists = voc / "ImageSets" / "Segmentation"
    common = ["--voc-root", str(voc), "--train-list", str(lists / "train.txt"), "--quiet"]
    assert main(["train-cam", *common, "--out", str(tmp_path / "c")]) == 2
    assert "--weights" in capsys.readouterr().err
    aff = ["--aff-labels", str(tmp_path / "al"), "--out", str(tmp_path / "a")]
    assert main(["train-aff", *common, *aff, "--backbone", "resnet50"]) == 2
    assert "torchvision" in capsys.readouterr().err
    assert not (tmp_path / "c").exists() and not (tmp_path / "a").exists()


def test_train_seg_refuses_imagenet_backbones_without_weights_or_init_from(
    voc, tmp_path, capsys, monkeypatch, fake_run
):
    lists = voc / "ImageSets" / "Segmentation"
    argv = ["train-seg", "--voc-root", str(voc), "--train-list", str(lists / "train.txt")]
    argv += ["--rw-dir", str(tmp_path / "rw"), "--out", str(tmp_path / "s"), "--quiet"]
    assert main(argv) == 2
    assert "--weights" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    calls = []
    replace_stages(monkeypatch, {"train_seg": lambda *a, **k: calls.append(a[-1])})
    assert main([*argv, "--init-from", str(tmp_path / "train_aff")]) == 0
    (cfg,) = calls
    assert cfg.init_from == str(tmp_path / "train_aff") and cfg.weights is None
    # affext run: a config file with weights for two of the three networks is refused too
    config = tmp_path / "run.json"
    config.write_text('{"train_cam": {"weights": "w.pth"}, "train_aff": {"weights": "w.pth"}}')
    assert main(run_args(voc, tmp_path / "work", "--config", str(config))) == 2
    assert "--weights" in capsys.readouterr().err and not fake_run


def test_the_python_api_refuses_training_from_scratch_as_the_cli_does(voc, tmp_path, capsys):
    """train_cam / train_aff / train_seg called directly: the CLI's message, before any work;
    weights, init_from (train-seg) or from_scratch=True let them go on (here to the unknown
    image id, the next thing they check)."""
    from affext.stages.train_aff import TrainAffConfig, train_aff
    from affext.stages.train_cam import TrainCamConfig, train_cam
    from affext.stages.train_seg import TrainSegConfig, train_seg

    lists = voc / "ImageSets" / "Segmentation"
    assert main(["train-cam", "--voc-root", str(voc), "--train-list", str(lists / "train.txt"),
                 "--out", str(tmp_path / "cli"), "--quiet"]) == 2  # fmt: skip
    message = capsys.readouterr().err.strip().split(": error: ", 1)[1]
    stages = {
        "cam": lambda cfg, out: train_cam(voc, ["nope"], out, cfg, progress=False),
        "aff": lambda cfg, out: train_aff(voc, ["nope"], tmp_path, out, cfg, progress=False),
        "seg": lambda cfg, out: train_seg(voc, ["nope"], tmp_path, out, cfg, progress=False),
    }
    configs = {"cam": TrainCamConfig, "aff": TrainAffConfig, "seg": TrainSegConfig}
    for kind, stage in stages.items():
        out = tmp_path / kind
        with pytest.raises(ValueError) as refused:
            stage(configs[kind](device="cpu"), out)
        assert str(refused.value) == message
        assert not out.exists()
        consents = [{"from_scratch": True}, {"weights": "w.pth"}]
        if kind == "seg":
            consents.append({"init_from": "train-cam"})
        for consent in consents:
            with pytest.raises(DatasetError, match="nope"):
                stage(configs[kind](device="cpu", **consent), out)


@pytest.mark.parametrize(
    "extra", [["--backbone", "tiny"], ["--from-scratch"], ["--weights", "w.pth"]]
)
def test_run_goes_on_with_tiny_weights_or_an_explicit_from_scratch(voc, tmp_path, fake_run, extra):
    assert main(run_args(voc, tmp_path / "work", *extra)) == 0
    (cfg,) = fake_run
    assert cfg.backbone == ("tiny" if "tiny" in extra else "resnet38")
    assert (
        cfg.train_cam.weights == cfg.train_aff.weights == (extra[1] if "w.pth" in extra else None)
    )


# -- 11: one line naming the file and the problem, no traceback --------------------------------
def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def voc_copy(voc, tmp_path) -> Path:
    out = tmp_path / "voc"
    shutil.copytree(voc, out)
    return out


@pytest.mark.parametrize("damage", ["zero-byte", "truncated"])
def test_a_broken_jpeg_read_in_a_worker_is_one_line(voc_copy, ids, tmp_path, capsys, damage):
    image = voc_copy / "JPEGImages" / f"{ids[0]}.jpg"
    image.write_bytes(b"" if damage == "zero-byte" else image.read_bytes()[:300])
    lists = voc_copy / "ImageSets" / "Segmentation"
    argv = ["train-cam", "--voc-root", str(voc_copy), "--train-list", str(lists / "train.txt")]
    argv += ["--backbone", "tiny", "--device", "cpu", "--workers", "1", "--epochs", "1", "--quiet"]
    err = one_line_error(capsys, [*argv, "--batch-size", "2", "--out", str(tmp_path / "o")])
    assert f"cannot decode image {str(image)!r}" in err


def test_a_cam_of_the_wrong_size_read_in_a_worker_is_one_line(voc, ids, tmp_path, capsys):
    cams = write_cams(voc, ids[:2], tmp_path / "cam")
    keys = load_score_dict(cams / f"{ids[1]}.npy")
    save_score_dict(cams / f"{ids[1]}.npy", {k: np.zeros((10, 17), np.float32) for k in keys})
    net = tmp_path / "aff_net.pt"
    save_checkpoint(AffinityNet(build_backbone("tiny")), net)
    (tmp_path / "list.txt").write_text("\n".join(ids[:2]) + "\n")
    argv = ["make-rw", "--voc-root", str(voc), "--list", str(tmp_path / "list.txt")]
    argv += ["--cam-dir", str(cams), "--aff-net", str(net), "--out", str(tmp_path / "rw")]
    argv += ["--backbone", "tiny", "--device", "cpu", "--workers", "1", "--iterations", "2"]
    err = one_line_error(capsys, [*argv, "--no-crf", "--quiet"])
    assert f"CAM file {str(cams / f'{ids[1]}.npy')!r}" in err and "(10, 17)" in err


def test_a_cam_checkpoint_given_as_the_affinitynet_says_what_the_file_holds(
    voc, ids, tmp_path, capsys
):
    net = tmp_path / "cam_net.pt"
    save_checkpoint(CAMNet(build_backbone("tiny")), net)
    for path, state in ((net, None), (tmp_path / "bare.pth", CAMNet(build_backbone("tiny")))):
        if state is not None:  # a bare state dict, as psa's res38_cls.pth
            torch.save(state.state_dict(), path)
        argv = ["make-rw", "--voc-root", str(voc), "--list", str(tmp_path / "l.txt")]
        (tmp_path / "l.txt").write_text(ids[0] + "\n")
        argv += ["--cam-dir", str(write_cams(voc, ids[:1], tmp_path / "cam"))]
        argv += ["--aff-net", str(path), "--out", str(tmp_path / "rw"), "--backbone", "tiny"]
        err = one_line_error(capsys, [*argv, "--device", "cpu", "--quiet"])
        assert f"checkpoint {path} holds a CAM network" in err and "--aff-net" in err


@pytest.mark.parametrize("case", ["file", "under-a-file", "uncreatable", "read-only"])
def test_an_unusable_workdir_is_one_line_naming_it(voc, tmp_path, capsys, monkeypatch, case):
    (tmp_path / "afile").write_text("x")
    work = {
        "file": tmp_path / "afile",
        "under-a-file": tmp_path / "afile" / "work",
        "uncreatable": Path("/proc/affext-work"),
        "read-only": tmp_path / "ro",
    }[case]
    if case == "read-only":
        work.mkdir(mode=0o555)
        if os.geteuid() == 0:  # root writes anywhere: fail as the OS does for everyone else

            def denied(*args, dir=None, **kw):
                raise PermissionError(errno.EACCES, "Permission denied", f"{dir}/.x.tmp")

            monkeypatch.setattr(files.tempfile, "mkstemp", denied)
    err = one_line_error(capsys, run_args(voc, work, "--backbone", "tiny", "--device", "cpu"))
    expected = {
        "file": f"{str(work)!r} is a file, not a folder",
        "under-a-file": f"cannot create {str(work)!r}: {str(work.parent)!r} is a file",
        "uncreatable": f"{str(work)!r} does not exist and cannot be created in '/proc'",
        "read-only": f"permission denied: cannot create {str(work / '.x.tmp')!r}, as "
        f"{str(work)!r} is not writable",
    }[case]
    assert expected in err


# -- 9: no stray temporary of the overview; resumed runs report each stage's own time ----------
def test_overview_removes_the_temporaries_a_killed_run_left(voc, ids, tmp_path):
    data = VOCDataset(voc)
    cams = write_cams(voc, ids[:2], tmp_path / "cam")
    (tmp_path / "rw").mkdir()
    for i in ids[:2]:
        save_label_png(tmp_path / "rw" / f"{i}.png", data.load_mask(i))
    stray = tmp_path / ".overview.png.k1ll3d.tmp"
    stray.write_bytes(b"")  # what a run killed inside atomic_save leaves
    other = tmp_path / ".other.png.k1ll3d.tmp"
    other.write_bytes(b"")
    write_overview(data, ids[:2], cams, tmp_path / "rw", tmp_path / "overview.png")
    assert not stray.exists() and other.exists()
    with Image.open(tmp_path / "overview.png") as im:
        assert im.height >= 2 * 128


def test_resumed_run_reports_each_stages_own_time(tmp_path, monkeypatch):
    """run_stages with the stages replaced by sleeps: the first invocation is interrupted
    (Ctrl-C) in make-rw; the resumed one finds the rest done at once."""
    pipeline = importlib.import_module("affext.stages.pipeline")
    sleeps = {"train_cam": 0.3, "make_cam": 0.2, "make_aff_labels": 0.1, "train_aff": 0.2}
    sleeps.update(train_seg=0.2, make_seg=0.1)
    interrupted = []

    def fake(name, seconds):
        def stage(*args, progress=True, **_):
            out = Path(args[-2])
            out.mkdir(parents=True, exist_ok=True)
            if (out / "done").exists():
                return
            time.sleep(seconds)
            if name == "make_rw" and not interrupted:
                interrupted.append(True)
                raise KeyboardInterrupt
            (out / "done").write_text("")

        return stage

    fakes = {name: fake(name, seconds) for name, seconds in {**sleeps, "make_rw": 0.15}.items()}
    replace_stages(monkeypatch, fakes)
    cfg = RunConfig.for_backbone("tiny")
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_stages("voc", ["a"], ["b"], tmp_path, cfg, progress=False)
    times = pipeline.run_stages("voc", ["a"], ["b"], tmp_path, cfg, progress=False)
    expected = {
        "train-cam": 0.3,
        "make-cam": 0.2,
        "make-aff-labels": 0.1,
        "train-aff": 0.2,
        "make-rw": 0.3,  # the interrupted part and the resumed one
        "train-seg": 0.2,
        "make-seg": 0.1,
    }
    assert set(times) == set(expected)
    for name, seconds in expected.items():
        assert seconds <= times[name] < seconds + 0.2, name


# -- 8: memory bounded by the working size, outputs at the image's size ------------------------
def _assert_peak_growth_below(child: str, root: Path, kib: int) -> None:
    """Run `child` (code printing its peak RSS after a small, then a big image) in a fresh
    process on ROOT; its peak may grow by less than `kib` between the two."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-c", child, str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    small, big = (int(v) for v in done.stdout.split())
    assert big - small < kib, f"peak grew by {(big - small) / 1024:.0f} MiB"


MEMORY_CHILD = """
import resource, sys
from pathlib import Path
from affext.stages.make_cam import MakeCamConfig, make_cam
from affext.stages.make_rw import MakeRwConfig, make_rw

root = Path(sys.argv[1])
common = dict(backbone="tiny", device="cpu", num_workers=0)
cam_cfg = MakeCamConfig(**common, long_side=160, scales=(1.0, 0.5))
rw_cfg = MakeRwConfig(**common, crf_workers=0, long_side=320, iterations=8)
peaks = []
for image in ("small", "big"):
    make_cam(root, [image], root / "cam_net", root / "cams", cam_cfg, progress=False)
    make_rw(root, [image], root / "cams" / "cam", root / "aff_net", root / "rw", rw_cfg,
            progress=False)
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
print(*peaks)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB is Linux's")
def test_a_huge_image_costs_memory_of_its_working_size_only(tmp_path):
    """make-cam (long side 160) and make-rw (320), the tiny preset's, in a child process: a
    400x300 image first (the child's own peak, every code path warmed), then a 4000x3000
    one, whose full-size float maps would cost 48 MB a channel (960 MB for the 20 classes).
    The peak may grow by far less than that; the outputs are at the image's size."""
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    pattern = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8))
    for name, size in (("small", (400, 300)), ("big", (4000, 3000))):
        pattern.resize(size, Image.BICUBIC).save(root / "JPEGImages" / f"{name}.jpg")
        (root / "Annotations" / f"{name}.xml").write_text(
            "<annotation><object><name>cat</name></object><object><name>dog</name></object>"
            "</annotation>"
        )
    save_checkpoint(CAMNet(build_backbone("tiny")), root / "cam_net" / "cam_net.pt")
    save_checkpoint(AffinityNet(build_backbone("tiny")), root / "aff_net" / "aff_net.pt")
    _assert_peak_growth_below(MEMORY_CHILD, root, 100 * 1024)
    cam = load_score_dict(root / "cams" / "cam" / "big.npy")
    assert sorted(cam) == [7, 11] and all(v.shape == (120, 160) for v in cam.values())
    for png in ("cams/cam_pred", "rw/rw", "rw/rw_crf"):
        label = np.array(Image.open(root / png / "big.png"))
        assert label.shape == (3000, 4000) and set(np.unique(label)) <= {0, 8, 12}, png


MEMORY_CHILD_SEG = """
import resource, sys
from pathlib import Path
from affext.stages.make_seg import MakeSegConfig, make_seg

root = Path(sys.argv[1])
cfg = MakeSegConfig(backbone="tiny", device="cpu", num_workers=0, crf_workers=0, long_side=320,
                    scales=(1.0, 0.5))
peaks = []
for image in ("small", "big"):
    make_seg(root, [image], root / "seg_net", root / "seg", cfg, progress=False)
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
print(*peaks)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB is Linux's")
def test_a_huge_image_costs_make_seg_memory_of_its_working_size_only(tmp_path):
    """make-seg at the tiny preset's working size (320) in a child process, as make-cam and
    make-rw above: a 400x300 image, then a 2000x1500 one, whose full-size probabilities would
    cost 12 MB a class (252 MB for VOC's 21). Its labels are at the image's size."""
    from affext.models.seg import SegNet

    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    pattern = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8))
    for name, size in (("small", (400, 300)), ("big", (2000, 1500))):
        pattern.resize(size, Image.BICUBIC).save(root / "JPEGImages" / f"{name}.jpg")
    torch.manual_seed(0)
    net = SegNet(build_backbone("tiny"), 20, channels=16, rates=(1, 2))
    head = {"num_classes": 20, "channels": 16, "rates": [1, 2], "dropout": 0.5}
    save_checkpoint(net, root / "seg_net" / "seg_net.pt", head=head)
    _assert_peak_growth_below(MEMORY_CHILD_SEG, root, 100 * 1024)
    for png in ("seg/seg", "seg/seg_crf"):
        label = np.array(Image.open(root / png / "big.png"))
        assert label.shape == (1500, 2000) and label.max() <= 20, png


def test_cams_kept_at_a_working_size_are_read_by_every_stage(voc, ids, tmp_path, random_aff_net):
    """A large image's CAMs are at make-cam's working size: make-aff-labels (dCRF at their
    size), train-aff's dataset, make-rw and the overview take them; other shapes are refused."""
    data = VOCDataset(voc)
    cams = tmp_path / "cam"
    cams.mkdir()
    for i in ids[:2]:
        h, w = data.load_image(i).shape[:2]
        small = kept_size((h, w), 40)
        keys = [int(c) for c in np.nonzero(data.image_labels(i))[0]]
        save_score_dict(cams / f"{i}.npy", {k: np.full(small, 0.5, np.float32) for k in keys})
    make_aff_labels(voc, ids[:2], cams, tmp_path / "al", progress=False)
    la = load_score_dict(tmp_path / "al" / "la" / f"{ids[0]}.npy")
    assert max(next(iter(la.values())).shape) == 40
    dataset = AffTrainDataset(
        data, ids[:2], tmp_path / "al" / "la", tmp_path / "al" / "ha", 48, (0,) * 4
    )
    image, labels = dataset[0]
    assert image.shape == (3, 48, 48) and labels.shape == (6, 6)
    out = make_rw_stage.make_rw(
        voc, ids[:2], cams, "unused", tmp_path / "rw", rw_config(long_side=96), progress=False
    )
    for i in ids[:2]:
        assert np.array(Image.open(out / "rw" / f"{i}.png")).shape == data.load_image(i).shape[:2]
    write_overview(data, ids[:2], cams, out / "rw", tmp_path / "overview.png")
    keys = load_score_dict(cams / f"{ids[0]}.npy")
    save_score_dict(cams / f"{ids[0]}.npy", {k: np.zeros((7, 40), np.float32) for k in keys})
    with pytest.raises(DatasetError, match=r"is \(7, 40\) but the image is"):
        make_aff_labels(voc, ids[:1], cams, tmp_path / "al2", progress=False)
