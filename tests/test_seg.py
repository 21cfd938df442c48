"""The segmentation network and its stages (train-seg, make-seg) on a handful of tiny images:
shapes, the loss against a plain formulation, outputs, resume, errors, another class count."""

import importlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import replace_stages, small_voc
from PIL import Image

from affext.data import VOCDataset, load_label_png, save_label_png
from affext.data.transforms import normalize
from affext.models import CAMNet, build_backbone, param_groups, read_checkpoint, save_checkpoint
from affext.models.seg import SegNet, segmentation_loss
from affext.records import ConfigChangedError
from affext.stages import training
from affext.stages.config import RunConfig
from affext.stages.crf import CRFConfig
from affext.stages.make_seg import MakeSegConfig, load_seg_net, make_seg
from affext.stages.train_seg import TrainSegConfig, build_seg_net, train_seg

# the module (affext.stages re-exports the function under the same name)
make_seg_module = importlib.import_module("affext.stages.make_seg")

FAST = dict(backbone="tiny", device="cpu", num_workers=0)
HEAD = dict(channels=16, rates=(1, 2, 3), dropout=0.0)


def seg_config(**kw):
    return TrainSegConfig(
        **{**FAST, **HEAD, "epochs": 2, "batch_size": 3, "crop_size": 48, "lr": 0.01, **kw}
    )  # fmt: skip


def infer_config(**kw):
    return MakeSegConfig(**{**FAST, "scales": (1.0, 0.5), "crf_workers": 0, **kw})


# ----------------------------------------------------------------------------------- network


@pytest.mark.parametrize(
    "name,size",
    [("tiny", (33, 41)), ("tiny", (8, 8)), ("resnet50", (25, 17)), ("resnet38", (17, 24))],
)
def test_segnet_gives_num_classes_plus_one_logits_at_stride_8(name, size):
    net = SegNet(build_backbone(name), num_classes=5, channels=8, rates=(2, 4)).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        out = net(x)
        full = net.logits(x)
    assert out.shape == (1, 6, math.ceil(size[0] / 8), math.ceil(size[1] / 8))
    assert full.shape == (1, 6, *size)
    assert torch.isfinite(out).all()
    # logits() is forward's map upsampled bilinearly to the input
    want = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(full, want)


def test_segnet_trains_with_a_batch_of_one_and_its_head_is_new_with_pretrained_weights():
    net = SegNet(build_backbone("tiny"), 3, channels=8, rates=(1,)).train()
    segmentation_loss(net(torch.randn(1, 3, 16, 16)), torch.zeros(1, 16, 16)).backward()
    weights = build_backbone("resnet50").state_dict()
    net = SegNet(build_backbone("resnet50", weights=weights), 3, channels=8, rates=(2,))
    groups = param_groups(net, 0.01, 5e-4)
    head = {id(p) for n, p in net.named_parameters() if not n.startswith("backbone.")}
    assert {id(p) for g in groups[2:] for p in g["params"]} == head
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.02, 0.1, 0.2])


def _cross_entropy_by_hand(logits, labels):
    """Mean over non-255 pixels of -log softmax(logits)[label], the softmax written out."""
    z = logits - logits.max(dim=1, keepdim=True).values
    log_probs = z - z.exp().sum(dim=1, keepdim=True).log()
    valid = labels != 255
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
    picked = log_probs.gather(1, safe[:, None])[:, 0]
    return -(picked * valid).sum() / valid.sum()


def test_segmentation_loss_is_cross_entropy_ignoring_255():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (2, 37, 45), generator=gen)
    labels[:, :9] = 255
    labels[1, :, -5:] = 255
    loss = segmentation_loss(logits, labels.to(torch.uint8))
    up = F.interpolate(logits, size=(37, 45), mode="bilinear", align_corners=False)
    want = _cross_entropy_by_hand(up, labels)
    torch.testing.assert_close(loss, want)
    grad = torch.autograd.grad(loss, logits)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(want, logits)[0])
    # same size: no resampling
    same = torch.randn(2, 4, 7, 3, dtype=torch.float64)
    small = torch.randint(0, 4, (2, 7, 3))
    small[0, 0] = 255
    torch.testing.assert_close(segmentation_loss(same, small), _cross_entropy_by_hand(same, small))
    # nothing to learn from: 0 with zero gradients, not NaN
    empty = segmentation_loss(logits, torch.full((2, 10, 12), 255))
    assert empty.item() == 0.0
    assert torch.count_nonzero(torch.autograd.grad(empty, logits)[0]) == 0


# ------------------------------------------------------------------------------------ stages


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    # one image size: the CPU convolutions are set up once per input shape
    return small_voc(tmp_path_factory.mktemp("voc"), 4, 2, size=(64, 64), seed=2)


@pytest.fixture(scope="module")
def rw_dir(voc, ids, tmp_path_factory) -> Path:
    """make-rw's output layout with stand-in pseudo labels: the ground truth (rw_crf) and the
    ground truth with its void band made background (rw), for every id."""
    out = tmp_path_factory.mktemp("make_rw")
    data = VOCDataset(voc)
    for i in ids:
        gt = data.load_mask(i)
        save_label_png(out / "rw_crf" / f"{i}.png", gt)
        save_label_png(out / "rw" / f"{i}.png", np.where(gt == 255, 0, gt).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def trained(voc, ids, rw_dir, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("seg")
    train_seg(voc, ids[:4], rw_dir, work / "seg_net", seg_config(), progress=False)
    return work


def test_train_seg_writes_a_network_that_make_seg_rebuilds(voc, ids, trained):
    classes = VOCDataset(voc).num_classes  # the synthetic set's own: 6
    ckpt = read_checkpoint(trained / "seg_net" / "seg_net.pt")
    assert (ckpt["network"], ckpt["backbone"]) == ("seg", "tiny")
    assert ckpt["meta"]["head"] == {"num_classes": classes, **HEAD, "rates": [1, 2, 3]}
    assert ckpt["meta"]["labels"] == "rw_crf"
    assert ckpt["state_dict"]["classifier.weight"].shape[0] == classes + 1
    log = json.loads((trained / "seg_net" / "train-seg.log.json").read_text())
    assert [e["epoch"] for e in log] == [1, 2] and all(math.isfinite(e["loss"]) for e in log)
    assert (trained / "seg_net" / "train-seg.config.json").is_file()
    model = load_seg_net(trained / "seg_net", "tiny", classes)
    assert isinstance(model, SegNet) and not model.training and model.rates == (1, 2, 3)


def test_make_seg_is_the_mean_of_its_passes_argmax_and_crf(voc, ids, trained):
    out = make_seg(
        voc, ids, trained / "seg_net", trained / "pred", infer_config(scales=(1.0,)), progress=False
    )
    data = VOCDataset(voc)
    model = load_seg_net(trained / "seg_net", "tiny", data.num_classes)
    for i in ids:
        rgb = data.load_image(i)
        x = torch.from_numpy(normalize(rgb))[None]
        with torch.no_grad():  # one scale and its flip, averaged as probabilities
            probs = F.softmax(model.logits(x), 1)[0] + F.softmax(model.logits(x.flip(-1)), 1)[
                0
            ].flip(-1)
        want = (probs / 2).argmax(0).numpy()
        for sub in ("seg", "seg_crf"):
            with Image.open(out / sub / f"{i}.png") as im:
                assert im.mode == "P" and im.size[::-1] == rgb.shape[:2]
        got = load_label_png(out / "seg" / f"{i}.png")
        # equal but where two classes' probabilities tie to float rounding
        assert np.mean(got == want) > 0.999, i
        crf = load_label_png(out / "seg_crf" / f"{i}.png")
        assert crf.max() <= data.num_classes
    assert (out / "make-seg.config.json").is_file()


def test_train_seg_resumes_exactly_after_interruption(
    voc, ids, rw_dir, trained, tmp_path, interrupted_training
):
    # the machine stops right after epoch 1's checkpoint
    interrupted_training(
        lambda: train_seg(voc, ids[:4], rw_dir, tmp_path, seg_config(), progress=False)
    )
    assert read_checkpoint(tmp_path / "train-seg.checkpoint.pt")["meta"]["epoch"] == 1
    assert not (tmp_path / "seg_net.pt").exists()
    train_seg(voc, ids[:4], rw_dir, tmp_path, seg_config(), progress=False)
    resumed = read_checkpoint(tmp_path / "seg_net.pt")["state_dict"]
    straight = read_checkpoint(trained / "seg_net" / "seg_net.pt")["state_dict"]
    assert resumed.keys() == straight.keys()
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], msg=k)
    # finished: a second call returns at once
    before = (tmp_path / "seg_net.pt").stat().st_mtime_ns
    train_seg(voc, ids[:4], rw_dir, tmp_path, seg_config(), progress=False)
    assert (tmp_path / "seg_net.pt").stat().st_mtime_ns == before


def test_make_seg_resumes_after_interruption(voc, ids, trained, tmp_path, monkeypatch):
    straight = make_seg(
        voc, ids[:3], trained / "seg_net", tmp_path / "a", infer_config(), progress=False
    )
    real_save = make_seg_module.save_label_png
    calls = []

    def save_then_stop(path, label):
        calls.append(path)
        if len(calls) == 3:  # image 2's seg PNG: image 1 complete, image 2 not
            raise KeyboardInterrupt
        real_save(path, label)

    monkeypatch.setattr(make_seg_module, "save_label_png", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        make_seg(voc, ids[:3], trained / "seg_net", tmp_path / "b", infer_config(), progress=False)
    monkeypatch.setattr(make_seg_module, "save_label_png", real_save)
    done = sorted(p.name for p in (tmp_path / "b" / "seg").glob("*.png"))
    assert done == [f"{ids[0]}.png"] and not list((tmp_path / "b").rglob("*.tmp"))
    # a marker in place of image 1's finished output is kept: only the rest is redone
    marker = np.zeros(VOCDataset(voc).load_image(ids[0]).shape[:2], np.uint8)
    save_label_png(tmp_path / "b" / "seg" / f"{ids[0]}.png", marker)
    make_seg(voc, ids[:3], trained / "seg_net", tmp_path / "b", infer_config(), progress=False)
    assert load_label_png(tmp_path / "b" / "seg" / f"{ids[0]}.png").max() == 0
    for i in ids[1:3]:
        for sub in ("seg", "seg_crf"):
            np.testing.assert_array_equal(
                load_label_png(tmp_path / "b" / sub / f"{i}.png"),
                load_label_png(straight / sub / f"{i}.png"),
            )


def test_crf_processes_give_the_same_labels(voc, ids, trained, tmp_path):
    reference = CRFConfig(backend="pydensecrf")
    one = make_seg(
        voc,
        ids[:3],
        trained / "seg_net",
        tmp_path / "in",
        infer_config(crf=reference),
        progress=False,
    )
    two = make_seg(
        voc,
        ids[:3],
        trained / "seg_net",
        tmp_path / "out",
        infer_config(crf_workers=2, crf=reference),
        progress=False,
    )
    for i in ids[:3]:
        np.testing.assert_array_equal(
            load_label_png(one / "seg_crf" / f"{i}.png"),
            load_label_png(two / "seg_crf" / f"{i}.png"),
        )


def test_missing_pseudo_labels_are_named(voc, ids, rw_dir, tmp_path):
    labels = tmp_path / "make_rw"
    for i in ids[1:]:
        save_label_png(labels / "rw" / f"{i}.png", load_label_png(rw_dir / "rw" / f"{i}.png"))
    missing = str(labels / "rw" / f"{ids[0]}.png")
    with pytest.raises(FileNotFoundError, match=f"missing pseudo label '{missing}'"):
        train_seg(voc, ids, labels, tmp_path / "s", seg_config(labels="rw"), progress=False)
    with pytest.raises(FileNotFoundError, match="rw_crf"):  # the CRF labels were never made
        train_seg(voc, ids[1:], labels, tmp_path / "s", seg_config(), progress=False)
    with pytest.raises(ValueError, match="labels must be one of"):
        train_seg(voc, ids, labels, tmp_path / "s", seg_config(labels="cam"), progress=False)


def test_checkpoints_of_another_backbone_network_or_class_count_are_refused(
    voc, ids, rw_dir, trained, tmp_path
):
    seg_net = trained / "seg_net"
    with pytest.raises(ValueError, match="backbone 'tiny', not 'resnet50'"):
        make_seg(voc, ids, seg_net, tmp_path, infer_config(backbone="resnet50"), progress=False)
    # the network alone (train-seg's config record beside it would refuse the setting first)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(seg_net / "seg_net.pt", alone / "seg_net.pt")
    cfg = seg_config(backbone="resnet50", from_scratch=True)  # past the refusal of no weights
    with pytest.raises(ValueError, match="backbone 'tiny', not 'resnet50'"):
        train_seg(voc, ids, rw_dir, alone, cfg, progress=False)
    with pytest.raises(FileNotFoundError, match="no train-seg checkpoint"):
        make_seg(voc, ids, tmp_path / "nothing", tmp_path, infer_config(), progress=False)
    other = tmp_path / "three_classes"
    save_checkpoint(build_seg_net("tiny", 3, **HEAD), other / "seg_net.pt", head={})
    message = f"trained for 3 classes, but the dataset has {VOCDataset(voc).num_classes}"
    with pytest.raises(ValueError, match=message):
        make_seg(voc, ids, other, tmp_path / "p", infer_config(), progress=False)
    with pytest.raises(ValueError, match=message):  # not resumed into, not overwritten
        train_seg(voc, ids, rw_dir, other, seg_config(), progress=False)
    # a per-epoch checkpoint of another class count is not resumed from either
    (other / "seg_net.pt").rename(other / "train-seg.checkpoint.pt")
    with pytest.raises(ValueError, match=message):
        train_seg(voc, ids, rw_dir, other, seg_config(), progress=False)
    cam = tmp_path / "cam" / "seg_net.pt"
    save_checkpoint(CAMNet(build_backbone("tiny")), cam)
    with pytest.raises(ValueError, match="holds a 'cam' network, not a segmentation network"):
        make_seg(voc, ids, cam, tmp_path / "p", infer_config(), progress=False)


def test_the_class_count_comes_from_the_dataset(voc, ids, rw_dir, tmp_path, monkeypatch):
    init = VOCDataset.__init__

    def three_classes(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.classes = ("circle", "square", "star")

    monkeypatch.setattr(VOCDataset, "__init__", three_classes)
    # the synthetic masks hold VOC indices (up to 20): labels of another dataset
    with pytest.raises(ValueError, match=r"holds class \d+, but the dataset has 3 classes"):
        train_seg(voc, ids, rw_dir, tmp_path / "x", seg_config(epochs=1), progress=False)
    labels = tmp_path / "make_rw"
    for i in ids:
        gt = load_label_png(rw_dir / "rw_crf" / f"{i}.png")
        mapped = np.where((gt == 0) | (gt == 255), gt, gt % 3 + 1).astype(np.uint8)
        save_label_png(labels / "rw_crf" / f"{i}.png", mapped)
    train_seg(voc, ids, labels, tmp_path / "s", seg_config(epochs=1), progress=False)
    ckpt = read_checkpoint(tmp_path / "s" / "seg_net.pt")
    assert ckpt["meta"]["head"]["num_classes"] == 3
    assert ckpt["state_dict"]["classifier.weight"].shape[0] == 4
    out = make_seg(voc, ids, tmp_path / "s", tmp_path / "p", infer_config(), progress=False)
    for i in ids:
        assert load_label_png(out / "seg" / f"{i}.png").max() <= 3


def test_warm_start_takes_a_trained_networks_backbone(voc, ids, rw_dir, tmp_path, monkeypatch):
    cam_net = CAMNet(build_backbone("tiny"))
    save_checkpoint(cam_net, tmp_path / "train_cam" / "cam_net.pt")
    monkeypatch.setattr(training, "fit", lambda *args, **kwargs: [])  # no training
    cfg = seg_config(init_from=str(tmp_path / "train_cam"))
    train_seg(voc, ids[:4], rw_dir, tmp_path / "s", cfg, progress=False)
    ckpt = read_checkpoint(tmp_path / "s" / "seg_net.pt")
    assert ckpt["meta"]["init_from"] == str(tmp_path / "train_cam" / "cam_net.pt")
    for k, v in cam_net.backbone.state_dict().items():
        torch.testing.assert_close(ckpt["state_dict"][f"backbone.{k}"], v, msg=k)
    with pytest.raises(FileNotFoundError, match="resolved by `affext run` only"):
        train_seg(voc, ids[:4], rw_dir, tmp_path / "t", seg_config(init_from="train-aff"))
    with pytest.raises(ValueError, match="backbone 'tiny', not 'resnet50'"):
        cfg = seg_config(backbone="resnet50", init_from=str(tmp_path / "train_cam"))
        train_seg(voc, ids[:4], rw_dir, tmp_path / "u", cfg, progress=False)


def test_a_runs_warm_start_is_recorded_by_its_stage_name(voc, ids, rw_dir, tmp_path, monkeypatch):
    """`affext run`'s init_from "train-cam" starts from the run's train_cam/ network, and
    train-seg's config record keeps the name: the run's check for changed settings lets a
    resumed run go on, and a copy of the work directory too, and still names a change."""
    pipeline = importlib.import_module("affext.stages.pipeline")
    work = tmp_path / "work"
    cam_net = CAMNet(build_backbone("tiny"))
    save_checkpoint(cam_net, work / "train_cam" / "cam_net.pt")
    shutil.copytree(rw_dir, work / "make_rw")
    others = ("train_cam", "make_cam", "make_aff_labels", "train_aff", "make_rw", "make_seg")
    replace_stages(monkeypatch, dict.fromkeys(others, lambda *args, progress=True: None))
    monkeypatch.setattr(training, "fit", lambda *args, **kwargs: [])  # no training

    def config(init_from):
        seg = {**HEAD, "init_from": init_from}
        return RunConfig.for_backbone("tiny", device="cpu", num_workers=0, train_seg=seg)

    pipeline.run_stages(voc, ids[:4], ids[4:], work, config("train-cam"), progress=False)
    ckpt = read_checkpoint(work / "train_seg" / "seg_net.pt")
    assert ckpt["meta"]["init_from"] == str(work / "train_cam" / "cam_net.pt")
    for k, v in cam_net.backbone.state_dict().items():
        torch.testing.assert_close(ckpt["state_dict"][f"backbone.{k}"], v, msg=k)
    pipeline._redo_changed(work, config("train-cam"), overwrite=False)  # resumed: no change
    shutil.copytree(work, tmp_path / "moved")
    pipeline._redo_changed(tmp_path / "moved", config("train-cam"), overwrite=False)
    with pytest.raises(ConfigChangedError, match="init_from: 'train-cam' -> 'train-aff'"):
        pipeline._redo_changed(work, config("train-aff"), overwrite=False)
