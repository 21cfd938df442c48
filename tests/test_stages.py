"""Each pipeline stage on a handful of tiny synthetic images: outputs, resume, errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import small_voc
from PIL import Image

from affext.data import VOCDataset
from affext.files import load_score_dict, save_score_dict
from affext.models import read_checkpoint
from affext.stages import training
from affext.stages.aff_labels import AffLabelsConfig, crf_with_alpha, make_aff_labels
from affext.stages.config import RunConfig, stage_config
from affext.stages.make_cam import MakeCamConfig, cam_prediction, make_cam
from affext.stages.make_rw import MakeRwConfig, make_rw
from affext.stages.train_aff import TrainAffConfig, train_aff
from affext.stages.train_cam import TrainCamConfig, train_cam

FAST = dict(backbone="tiny", device="cpu", num_workers=0)


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return small_voc(tmp_path_factory.mktemp("voc"), 6, 2, seed=1)


def cam_config(**kw):
    return TrainCamConfig(
        **{**FAST, "epochs": 2, "batch_size": 3, "crop_size": 48, "resize_long": (56, 80), **kw}
    )


@pytest.fixture(scope="module")
def trained(voc, ids, tmp_path_factory):
    """train-cam -> make-cam -> make-aff-labels -> train-aff, once for the module."""
    work = tmp_path_factory.mktemp("work")
    train = ids[:6]
    train_cam(voc, train, work / "cam_net", cam_config(), progress=False)
    make_cam(voc, ids, work / "cam_net", work / "cams", MakeCamConfig(**FAST), progress=False)
    make_aff_labels(voc, train, work / "cams" / "cam", work / "aff_labels", progress=False)
    train_aff(
        voc,
        train,
        work / "aff_labels",
        work / "aff_net",
        TrainAffConfig(**FAST, epochs=1, batch_size=3, crop_size=72),
        progress=False,
    )
    return work


def test_make_cam_writes_psa_dicts(voc, ids, trained):
    data = VOCDataset(voc)
    for i in ids:
        cam = load_score_dict(trained / "cams" / "cam" / f"{i}.npy")
        present = set(np.nonzero(data.image_labels(i))[0].tolist())
        assert set(cam) == present
        h, w = data.load_image(i).shape[:2]
        for v in cam.values():
            assert v.shape == (h, w) and v.dtype == np.float32
            assert v.min() >= 0 and v.max() <= 1.0
        pred = np.array(Image.open(trained / "cams" / "cam_pred" / f"{i}.png"))
        assert pred.shape == (h, w)
        assert set(np.unique(pred)) <= {0} | {c + 1 for c in present}
    assert (trained / "cams" / "make-cam.config.json").is_file()


def test_cam_prediction_uses_constant_background():
    cams = np.zeros((20, 1, 3), np.float32)
    cams[4] = [[0.1, 0.3, 0.9]]
    cams[6] = [[0.0, 0.5, 0.2]]
    assert cam_prediction(cams, 0.2).tolist() == [[0, 7, 5]]


def test_aff_labels_follow_psa_format(voc, ids, trained):
    data = VOCDataset(voc)
    i = ids[0]
    cam = load_score_dict(trained / "cams" / "cam" / f"{i}.npy")
    for name in ("la", "ha"):
        out = load_score_dict(trained / "aff_labels" / name / f"{i}.npy")
        assert sorted(out) == [0] + sorted(k + 1 for k in cam)
        assert all(v.shape == data.load_image(i).shape[:2] for v in out.values())
        total = sum(out.values())
        np.testing.assert_allclose(total, 1.0, atol=1e-3)  # CRF marginals


def test_crf_with_alpha_background_power():
    image = np.zeros((6, 8, 3), np.uint8)
    image[:, 4:] = 200
    cam = {2: np.zeros((6, 8), np.float32)}
    cam[2][:, 4:] = 0.9
    low = crf_with_alpha(image, cam, 4.0)
    high = crf_with_alpha(image, cam, 32.0)
    # the foreground wins where the CAM is strong, and more so with the weaker background
    assert np.argmax(np.stack([low[0], low[3]]), 0)[:, 4:].all()
    assert (high[3] >= low[3] - 1e-6).all()
    assert np.argmax(np.stack([low[0], low[3]]), 0)[:, :4].sum() == 0


def test_make_rw_writes_palette_pngs(voc, ids, trained):
    out = make_rw(
        voc,
        ids,
        trained / "cams" / "cam",
        trained / "aff_net",
        trained / "rw",
        MakeRwConfig(**FAST, iterations=16),
        progress=False,
    )
    data = VOCDataset(voc)
    for i in ids:
        present = {k + 1 for k in load_score_dict(trained / "cams" / "cam" / f"{i}.npy")}
        for sub in ("rw", "rw_crf"):
            with Image.open(out / sub / f"{i}.png") as im:
                assert im.mode == "P" and im.size[::-1] == data.load_image(i).shape[:2]
                assert set(np.unique(np.array(im))) <= {0} | present


def test_per_image_stages_skip_finished_outputs(voc, ids, trained):
    target = trained / "cams" / "cam" / f"{ids[0]}.npy"
    save_score_dict(target, {99: np.zeros((1, 1), np.float32)})  # a marker, not a real CAM
    make_cam(voc, ids, trained / "cam_net", trained / "cams", MakeCamConfig(**FAST), progress=False)
    assert list(load_score_dict(target)) == [99]
    # only the missing image is redone
    target.unlink()
    make_cam(voc, ids, trained / "cam_net", trained / "cams", MakeCamConfig(**FAST), progress=False)
    assert 99 not in load_score_dict(target)
    assert not list((trained / "cams" / "cam").glob("*.tmp"))


def test_train_cam_resumes_exactly_after_interruption(
    voc, ids, trained, tmp_path, interrupted_training
):
    # the machine stops right after epoch 1's checkpoint
    interrupted_training(lambda: train_cam(voc, ids[:6], tmp_path, cam_config(), progress=False))
    assert read_checkpoint(tmp_path / "train-cam.checkpoint.pt")["meta"]["epoch"] == 1
    assert not (tmp_path / "cam_net.pt").exists()
    train_cam(voc, ids[:6], tmp_path, cam_config(), progress=False)
    resumed = read_checkpoint(tmp_path / "cam_net.pt")["state_dict"]
    straight = read_checkpoint(trained / "cam_net" / "cam_net.pt")["state_dict"]
    assert resumed.keys() == straight.keys()
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], msg=k)


def test_stage_files_of_affext_0_1_load_through_the_one_reader(voc, ids, trained, tmp_path):
    # affext 0.1.0's stages wrote {"backbone", "model": state dict, ...}: still read, same
    # weights, and make-cam runs from it.
    ckpt = read_checkpoint(trained / "cam_net" / "cam_net.pt")
    old = tmp_path / "old_cam_net"
    old.mkdir()
    torch.save({"backbone": "tiny", "model": ckpt["state_dict"]}, old / "cam_net.pt")
    again = read_checkpoint(old / "cam_net.pt")
    assert (again["network"], again["backbone"]) == ("cam", "tiny")
    assert again["num_classes"] == ckpt["num_classes"] == VOCDataset(voc).num_classes == 6
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(again["state_dict"][k], v), k
    out = make_cam(voc, ids[:1], old, tmp_path / "cams", MakeCamConfig(**FAST), progress=False)
    cam = load_score_dict(out / "cam" / f"{ids[0]}.npy")
    want = load_score_dict(trained / "cams" / "cam" / f"{ids[0]}.npy")
    assert cam.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(cam[k], want[k])
    # a per-epoch file of 0.1.0 lacks the schedule: resuming from it says what to do
    torch.save(
        {"backbone": "tiny", "model": ckpt["state_dict"], "epoch": 1, "log": []},
        tmp_path / "train-cam.checkpoint.pt",
    )
    with pytest.raises(ValueError, match="without its learning-rate schedule: delete it"):
        train_cam(voc, ids[:6], tmp_path, cam_config(), progress=False)


def test_poly_schedule_is_psa_poly_lr():
    # psa's PolyOptimizer: step s of max_step runs at initial_lr * (1 - s / max_step) ** 0.9.
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (0.1, 2.0)]
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    max_step = 37
    schedule = training.poly_schedule(opt, max_step, 0.9)
    for step in range(max_step):
        for group, lr in zip(opt.param_groups, (0.1, 2.0)):
            # torch steps the factor recursively: equal to the formula to float64 rounding
            assert group["lr"] == pytest.approx(lr * (1 - step / max_step) ** 0.9, rel=1e-13)
        opt.step()
        schedule.step()
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0]


def test_errors_are_clear(voc, ids, trained, tmp_path):
    with pytest.raises(ValueError, match="backbone 'tiny', not 'resnet50'"):
        make_cam(
            voc,
            ids,
            trained / "cam_net",
            tmp_path,
            MakeCamConfig(**{**FAST, "backbone": "resnet50"}),
            progress=False,
        )
    with pytest.raises(FileNotFoundError, match="no train-cam checkpoint"):
        make_cam(voc, ids, tmp_path / "nothing", tmp_path, MakeCamConfig(**FAST), progress=False)
    with pytest.raises(FileNotFoundError, match="missing CAMs for 1 image"):
        make_aff_labels(voc, ids[:1], tmp_path / "no_cams", tmp_path / "al", progress=False)
    with pytest.raises(FileNotFoundError, match="missing CAMs"):
        make_rw(
            voc,
            ids[:1],
            tmp_path / "no_cams",
            trained / "aff_net",
            tmp_path / "rw",
            MakeRwConfig(**FAST),
            progress=False,
        )
    with pytest.raises(ValueError, match="unknown image id"):
        train_cam(voc, ["no_such_image"], tmp_path / "x", cam_config(), progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        train_cam(tmp_path / "no_root", ids, tmp_path / "x", cam_config(), progress=False)
    corrupt = tmp_path / "corrupt"
    (corrupt / "JPEGImages").mkdir(parents=True)
    (corrupt / "JPEGImages" / "a.jpg").write_bytes(b"\xff\xd8garbage")
    (corrupt / "Annotations").mkdir()
    (corrupt / "Annotations" / "a.xml").write_text(
        "<annotation><object><name>cat</name></object></annotation>"
    )
    with pytest.raises(ValueError, match="cannot decode image"):
        train_cam(
            corrupt, ["a"], tmp_path / "y", cam_config(batch_size=1, epochs=1), progress=False
        )


def test_configs_merge_defaults_preset_shared_settings_then_overrides():
    shared = {"backbone": "tiny", "device": "cpu", "num_workers": None, "seed": 3}
    cfg = stage_config(TrainCamConfig, "train_cam", shared, epochs=2, lr=None)
    assert (cfg.epochs, cfg.lr, cfg.optimizer) == (2, 0.003, "adam")  # override, preset
    assert (cfg.backbone, cfg.device, cfg.seed) == ("tiny", "cpu", 3)  # shared
    assert cfg.num_workers == TrainCamConfig().num_workers and cfg.momentum == 0.9  # psa's
    # a stage without a preset or a field takes only what it has
    labels = stage_config(AffLabelsConfig, "aff_labels", shared, alpha_low=2.0)
    assert labels == AffLabelsConfig(alpha_low=2.0, device="cpu")  # its dCRF's device
    # psa's defaults for a backbone without a preset
    assert stage_config(TrainCamConfig, "train_cam", {"backbone": "resnet38"}) == (TrainCamConfig())
    with pytest.raises(ValueError, match=r"train_cam has no setting\(s\) \['nope'\]"):
        stage_config(TrainCamConfig, "train_cam", shared, nope=1)
    run = RunConfig.for_backbone("tiny", device="cpu", num_workers=0, train_aff={"epochs": 3})
    assert run.train_aff == stage_config(
        TrainAffConfig,
        "train_aff",
        {"backbone": "tiny", "device": "cpu", "num_workers": 0},
        epochs=3,
    )
    assert run.make_rw.long_side == 320 and run.make_cam.long_side == 160
    assert run.train_cam.epochs == 10 and run.aff_labels == AffLabelsConfig(
        num_workers=0, device="cpu"
    )
