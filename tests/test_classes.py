"""A dataset's own classes: the classes file, every stage on a class count other than VOC's,
psa's VOC formats kept, checkpoints of another class count refused, and the label checks
(unknown XML names, mask classes outside the dataset's, repeated list ids)."""

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from helpers import miou_by_hand, small_voc

from affext import cli
from affext.data import (
    CLASSES_FILE,
    VOC_CLASSES,
    DatasetError,
    SynthConfig,
    VOCDataset,
    dataset_classes,
    load_cls_labels,
    load_label_png,
    make_synthetic_voc,
    read_classes,
    read_id_list,
    save_cls_labels,
    save_label_png,
)
from affext.data.synth import SYNTH_CLASSES
from affext.files import load_score_dict
from affext.models import read_checkpoint
from affext.stages import pipeline
from affext.stages.aff_labels import make_aff_labels
from affext.stages.config import RunConfig
from affext.stages.evaluate import evaluate
from affext.stages.make_cam import MakeCamConfig, make_cam
from affext.stages.make_rw import MakeRwConfig, make_rw
from affext.stages.pipeline import run
from affext.stages.train_aff import TrainAffConfig, train_aff
from affext.stages.train_cam import TrainCamConfig, train_cam

FAST = dict(backbone="tiny", device="cpu", num_workers=0)
# the three classes of the test set: synth's six classes merged in pairs, non-VOC names
THREE = ("red thing", "green thing", "blue thing")


def cam_config() -> TrainCamConfig:
    return TrainCamConfig(
        **FAST, epochs=1, batch_size=3, crop_size=40, resize_long=(40, 56), lr=0.01
    )


def three_class_voc(out: Path, num_train: int = 5, num_val: int = 2) -> Path:
    """The synthetic set with its classes merged pairwise into THREE (1, 2 -> 1; 3, 4 -> 2;
    5, 6 -> 3): masks, XML names and a classes.txt that starts with "background"."""
    root = small_voc(out, num_train, num_val, size=(40, 56), seed=3)
    merge = np.array([0, 1, 1, 2, 2, 3, 3] + [0] * 248 + [255], np.uint8)
    for png in (root / "SegmentationClass").glob("*.png"):
        save_label_png(png, merge[load_label_png(png)])
    for xml in (root / "Annotations").glob("*.xml"):
        tree = ET.parse(xml)
        for name in tree.getroot().iter("name"):
            name.text = THREE[(SYNTH_CLASSES.index(name.text)) // 2]
        tree.write(xml)
    (root / CLASSES_FILE).write_text("background\n# merged pairs\n" + "\n".join(THREE) + "\n")
    return root


@pytest.fixture(scope="module")
def voc3(tmp_path_factory) -> Path:
    return three_class_voc(tmp_path_factory.mktemp("voc3"))


# ------------------------------------------------------------------------ the classes file
def test_classes_file_format_and_default(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("# my classes\nbackground\n\n  traffic light \nfire hydrant\n")
    assert read_classes(f) == ("traffic light", "fire hydrant")  # background line skipped
    f.write_text("cat\ndog\n")
    assert read_classes(f) == ("cat", "dog")
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    voc = VOCDataset(root, label_source="mask")
    assert voc.classes == VOC_CLASSES and voc.num_classes == 20  # no classes.txt: VOC's
    assert voc.class_names == ("background",) + VOC_CLASSES
    assert VOCDataset(root, label_source="mask", classes=f).classes == ("cat", "dog")
    (root / CLASSES_FILE).write_text("a\nb\nc\n")
    voc = VOCDataset(root, label_source="mask")
    assert voc.classes == ("a", "b", "c") and voc.class_names == ("background", "a", "b", "c")
    # an explicit setting wins over ROOT/classes.txt; "voc" is VOC's 20
    assert VOCDataset(root, label_source="mask", classes=f).num_classes == 2
    assert VOCDataset(root, label_source="mask", classes="voc").classes == VOC_CLASSES
    assert dataset_classes(root, ["x", "y"]) == ("x", "y")


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "names no class"),
        ("# only a comment\n\n", "names no class"),
        ("background\n", "names no class"),
        ("cat\ndog\ncat\n", r"names class\(es\) \['cat'\] more than once"),
        ("cat\nbackground\n", "'background' is class 0"),
        ("".join(f"c{i}\n" for i in range(255)), "names 255 classes; at most 254"),
    ],
)
def test_classes_file_errors_name_the_file(tmp_path, text, message):
    f = tmp_path / "classes.txt"
    f.write_text(text)
    with pytest.raises(DatasetError, match=message) as err:
        read_classes(f)
    assert str(f) in str(err.value)
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(DatasetError, match=message):
        VOCDataset(tmp_path)  # ROOT/classes.txt is read when the dataset opens
    with pytest.raises(DatasetError, match="does not exist"):
        VOCDataset(tmp_path, classes=tmp_path / "nope.txt")


def test_synthetic_set_declares_six_classes_or_voc_indices(tmp_path):
    own = make_synthetic_voc(tmp_path / "own", SynthConfig(num_train=3, num_val=0), False)
    voc = make_synthetic_voc(
        tmp_path / "voc", SynthConfig(num_train=3, num_val=0, voc_indices=True), False
    )
    assert VOCDataset(own).classes == SYNTH_CLASSES
    # a folder of the other layout is not topped up (its masks would mix the two)
    with pytest.raises(ValueError, match="written with VOC's class indices"):
        make_synthetic_voc(tmp_path / "voc", SynthConfig(num_train=3, num_val=0), False)
    with pytest.raises(ValueError, match="written with its own classes"):
        make_synthetic_voc(own, SynthConfig(num_train=3, num_val=0, voc_indices=True), False)
    assert make_synthetic_voc(own, SynthConfig(num_train=3, num_val=0), False) == own  # resumes
    assert VOCDataset(voc).classes == VOC_CLASSES and not (voc / CLASSES_FILE).exists()
    lut = np.array([0] + [VOC_CLASSES.index(n) + 1 for n in SYNTH_CLASSES], np.uint8)
    for i in read_id_list(own / "ImageSets/Segmentation/train.txt"):
        # the same scenes; only the indices differ
        a = VOCDataset(own, label_source="mask")
        b = VOCDataset(voc, label_source="mask")
        np.testing.assert_array_equal(a.load_image(i), b.load_image(i))
        gt = a.load_mask(i)
        want = np.where(gt == 255, 255, lut[np.minimum(gt, 6)])
        np.testing.assert_array_equal(b.load_mask(i), want)
        assert a.image_labels(i).shape == (6,) and b.image_labels(i).shape == (20,)
        own_present = np.nonzero(a.image_labels(i))[0] + 1
        voc_present = np.nonzero(b.image_labels(i))[0] + 1
        assert sorted(lut[own_present].tolist()) == voc_present.tolist()


# ------------------------------------------------------------------------ psa's VOC formats
def test_psa_cls_labels_format_unchanged_for_voc(tmp_path):
    root = make_synthetic_voc(
        tmp_path / "voc", SynthConfig(num_train=2, num_val=0, voc_indices=True), False
    )
    ids = read_id_list(root / "ImageSets/Segmentation/train.txt")
    xml = VOCDataset(root, label_source="xml")
    table = {i: xml.image_labels(i) for i in ids}
    save_cls_labels(root / "cls_labels.npy", table)
    raw = np.load(root / "cls_labels.npy", allow_pickle=True).item()  # as psa reads it
    assert set(raw) == set(ids)
    for i in ids:
        assert raw[i].shape == (20,) and raw[i].dtype == np.float32
        np.testing.assert_array_equal(raw[i], table[i])
    npy = VOCDataset(root)
    assert npy.label_source == "npy" and npy.num_classes == 20
    np.testing.assert_array_equal(npy.image_labels(ids[0]), table[ids[0]])
    # a table of another class count is refused by name
    with pytest.raises(DatasetError, match=r"holds a \(20,\) label vector .* has 6 classes"):
        load_cls_labels(root / "cls_labels.npy", 6)


# ------------------------------------------------------ every stage on three classes
@pytest.fixture(scope="module")
def stages3(voc3, tmp_path_factory):
    work = tmp_path_factory.mktemp("work3")
    ids = read_id_list(voc3 / "ImageSets/Segmentation/trainval.txt")
    train = read_id_list(voc3 / "ImageSets/Segmentation/train.txt")
    train_cam(voc3, train, work / "cam_net", cam_config(), progress=False)
    cfg = MakeCamConfig(**FAST, scales=(1.0, 0.5))
    make_cam(voc3, ids, work / "cam_net", work / "cams", cfg, progress=False)
    make_aff_labels(voc3, train, work / "cams" / "cam", work / "aff", progress=False)
    aff_cfg = TrainAffConfig(**FAST, epochs=1, batch_size=3, crop_size=72)  # radius 5: 9 cells
    train_aff(voc3, train, work / "aff", work / "aff_net", aff_cfg, progress=False)
    rw_cfg = MakeRwConfig(**FAST, iterations=4, crf_workers=0, long_side=96)  # 9 cells wide
    make_rw(voc3, ids, work / "cams" / "cam", work / "aff_net", work / "rw", rw_cfg, False)
    return work, ids


def test_every_stage_runs_on_three_classes(voc3, stages3):
    work, ids = stages3
    data = VOCDataset(voc3)
    assert data.classes == THREE and data.label_source == "xml"
    ckpt = read_checkpoint(work / "cam_net" / "cam_net.pt")
    assert ckpt["num_classes"] == 3 and ckpt["state_dict"]["fc8.weight"].shape[0] == 3
    for i in ids:
        present = np.nonzero(data.image_labels(i))[0].tolist()
        assert present  # every image has a class: the labels came through
        cam = load_score_dict(work / "cams" / "cam" / f"{i}.npy")
        assert sorted(cam) == present  # psa's dict, keys 0..C-1
        assert set(np.unique(load_label_png(work / "cams" / "cam_pred" / f"{i}.png"))) <= {
            0,
            *(c + 1 for c in present),
        }
        rw = load_label_png(work / "rw" / "rw" / f"{i}.png")
        assert rw.shape == data.load_mask(i).shape
        assert set(np.unique(rw)) <= {0, *(c + 1 for c in present)}
        for kind in ("rw", "rw_crf"):
            assert (work / "rw" / kind / f"{i}.png").is_file()
    for folder in (work / "cams" / "cam_pred", work / "rw" / "rw", work / "rw" / "rw_crf"):
        out = evaluate(voc3, folder, ids, progress=False)
        assert tuple(out["iou"]) == ("background",) + THREE
        want = miou_by_hand(
            [folder / f"{i}.png" for i in ids],
            [data.mask_path(i) for i in ids],
            num_classes=4,
        )
        assert out["miou"] == pytest.approx(want, abs=1e-3)


def test_a_cam_network_of_another_class_count_is_refused(voc3, stages3, tmp_path):
    work, ids = stages3
    six = small_voc(tmp_path / "six", 2, 0, size=(40, 56))
    with pytest.raises(ValueError, match="was trained for 3 classes, but the dataset has 6"):
        make_cam(six, ids[:0], work / "cam_net", tmp_path / "cams", MakeCamConfig(**FAST), False)
    # train-cam into a folder whose network is another dataset's: refused, not reused
    with pytest.raises(ValueError, match="was trained for 3 classes, but the dataset has 6"):
        train_cam(six, ["synth_00000"], work / "cam_net", cam_config(), progress=False)
    # the same dataset read as VOC's 20 classes (--classes voc): refused as well
    with pytest.raises(ValueError, match="was trained for 3 classes, but the dataset has 20"):
        cfg = MakeCamConfig(**FAST, classes="voc", label_source="mask")
        make_cam(voc3, ids[:1], work / "cam_net", tmp_path / "cams20", cfg, progress=False)


def test_make_aff_labels_takes_the_classes_setting(tmp_path):
    """--classes wins over ROOT/classes.txt in make-aff-labels too: CAMs made for the classes
    given (keys up to 5 of six) are not refused as outside ROOT's three."""
    root = small_voc(tmp_path / "voc", 2, 0, size=(40, 56))
    (root / CLASSES_FILE).write_text("\n".join(THREE) + "\n")  # stale: three of six
    six = tmp_path / "six.txt"
    six.write_text("\n".join(SYNTH_CLASSES) + "\n")
    ids = ["synth_00000", "synth_00001"]
    (tmp_path / "list.txt").write_text("\n".join(ids) + "\n")
    rng = np.random.default_rng(0)
    (tmp_path / "cam").mkdir()
    for i in ids:  # psa's CAM dicts of classes 2 and 6 (keys 1 and 5)
        h, w = VOCDataset(root, "mask").load_image(i).shape[:2]
        cam = {k: rng.random((h, w), dtype=np.float32) for k in (1, 5)}
        np.save(tmp_path / "cam" / f"{i}.npy", cam, allow_pickle=True)
    argv = ["make-aff-labels", "--voc-root", str(root), "--list", str(tmp_path / "list.txt")]
    argv += ["--cam-dir", str(tmp_path / "cam"), "--out", str(tmp_path / "aff"), "--quiet"]
    with pytest.raises(DatasetError, match=r"outside the dataset's 3 classes"):
        make_aff_labels(root, ids, tmp_path / "cam", tmp_path / "aff0", progress=False)
    assert cli.main(argv + ["--classes", str(six)]) == 0
    for i in ids:
        for kind in ("la", "ha"):
            assert sorted(load_score_dict(tmp_path / "aff" / kind / f"{i}.npy")) == [0, 2, 6]


# ---------------------------------------------------------------- issue 16: labels checked
def test_unknown_xml_class_is_an_error_naming_file_and_class(voc3, tmp_path):
    root = three_class_voc(tmp_path / "voc", 3, 0)
    xml = root / "Annotations" / "synth_00001.xml"
    tree = ET.parse(xml)
    obj = ET.SubElement(tree.getroot(), "object")
    ET.SubElement(obj, "name").text = "unicorn"
    part = ET.SubElement(obj, "part")
    ET.SubElement(part, "name").text = "head"  # a part's name is not a class
    tree.write(xml)
    voc = VOCDataset(root)
    with pytest.raises(DatasetError, match=r"synth_00001\.xml' names class\(es\) \['unicorn'\]"):
        voc.image_labels("synth_00001")
    cfg = TrainCamConfig(**FAST, epochs=1, batch_size=2, crop_size=40)
    with pytest.raises(DatasetError, match="unicorn"):  # before any training
        train_cam(root, ["synth_00000", "synth_00001"], tmp_path / "cam", cfg, progress=False)
    assert not (tmp_path / "cam" / "train-cam.checkpoint.pt").exists()
    # the VOC names of the original set are not this dataset's classes either
    voc6 = small_voc(tmp_path / "six", 1, 0, size=(40, 56), seed=3)
    name = ET.parse(voc6 / "Annotations" / "synth_00000.xml").getroot().find("object/name").text
    with pytest.raises(DatasetError, match=f"names class\\(es\\) \\['{name}'\\]"):
        VOCDataset(voc6, classes=root / CLASSES_FILE).image_labels("synth_00000")


def test_mask_class_outside_the_dataset_is_an_error_naming_file(voc3, tmp_path, capsys):
    root = three_class_voc(tmp_path / "voc", 3, 0)
    png = root / "SegmentationClass" / "synth_00002.png"
    gt = load_label_png(png)
    gt[:2, :2] = 7
    save_label_png(png, gt)
    voc = VOCDataset(root, label_source="mask")
    with pytest.raises(DatasetError, match=r"synth_00002\.png'.* class index 7, outside .* 1\.\.3"):
        voc.image_labels("synth_00002")
    argv = ["train-cam", "--voc-root", str(root), "--label-source", "mask", "--backbone", "tiny"]
    argv += ["--device", "cpu", "--workers", "0", "--quiet", "--out", str(tmp_path / "cam")]
    argv += ["--train-list", str(root / "ImageSets/Segmentation/train.txt"), "--epochs", "1"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "synth_00002.png" in err and "class index 7" in err and "Traceback" not in err
    # read as VOC's 20 classes (--classes voc), the same mask is valid
    assert VOCDataset(root, "mask", classes="voc").image_labels("synth_00002")[6] == 1


def test_ground_truth_outside_the_classes_stops_run_before_the_first_stage(tmp_path):
    root = three_class_voc(tmp_path / "voc", 2, 2)
    val = read_id_list(root / "ImageSets/Segmentation/val.txt")
    png = root / "SegmentationClass" / f"{val[1]}.png"
    gt = load_label_png(png)
    gt[0, 0] = 9
    save_label_png(png, gt)
    cfg = RunConfig.for_backbone("tiny", device="cpu", num_workers=0)
    lists = root / "ImageSets" / "Segmentation"
    with pytest.raises(DatasetError, match=rf"{val[1]}\.png'.* class index\(es\) \[9\]"):
        run(root, lists / "train.txt", lists / "val.txt", tmp_path / "work", cfg, progress=False)
    assert not (tmp_path / "work" / "train_cam").exists()  # no stage ran


def test_evaluate_errors_name_the_file(tmp_path):
    root = three_class_voc(tmp_path / "voc", 3, 0)
    ids = read_id_list(root / "ImageSets/Segmentation/train.txt")
    voc = VOCDataset(root)
    pred = tmp_path / "pred"
    for i in ids:
        save_label_png(pred / f"{i}.png", voc.load_mask(i))
    assert evaluate(root, pred, ids, progress=False)["miou"] == 100.0
    save_label_png(pred / f"{ids[1]}.png", np.zeros((5, 6), np.uint8))
    with pytest.raises(DatasetError, match=rf"prediction .*{ids[1]}\.png' is 6x5 .* {ids[1]!r}"):
        evaluate(root, pred, ids, progress=False)
    save_label_png(pred / f"{ids[1]}.png", voc.load_mask(ids[1]))
    png = root / "SegmentationClass" / f"{ids[2]}.png"
    gt = load_label_png(png)
    gt[-1, -1] = 4
    save_label_png(png, gt)
    with pytest.raises(DatasetError, match=rf"{ids[2]}\.png' holds class index\(es\) \[4\]"):
        evaluate(root, pred, ids, progress=False)


def test_repeated_list_ids_are_used_once_with_a_warning(tmp_path):
    root = three_class_voc(tmp_path / "voc", 3, 0)
    ids = read_id_list(root / "ImageSets/Segmentation/train.txt")
    listed = tmp_path / "list.txt"
    listed.write_text("\n".join([ids[0], ids[1], ids[0], ids[0], ids[2]]) + "\n")
    repeated = rf"list.txt' names 2 id\(s\) more than once .*{ids[0]}"
    with pytest.warns(UserWarning, match=repeated):
        assert read_id_list(listed) == ids
    voc = VOCDataset(root)
    pred = tmp_path / "pred"
    for n, i in enumerate(ids):  # a right prediction for ids[0] only
        mask = voc.load_mask(i)
        save_label_png(pred / f"{i}.png", mask if n == 0 else np.zeros_like(mask))
    once = evaluate(root, pred, ids, progress=False)
    with pytest.warns(UserWarning, match="more than once"):
        twice = evaluate(root, pred, [ids[0], *ids, ids[0]], progress=False)
    assert twice == once and twice["images"] == 3
    with pytest.warns(UserWarning, match="more than once"):  # `affext run`'s lists given as ids
        assert pipeline._ids([ids[1], ids[0], ids[1]]) == [ids[1], ids[0]]


def test_eval_command_takes_classes(voc3, stages3, tmp_path, capsys):
    work, ids = stages3
    listed = tmp_path / "ids.txt"
    listed.write_text("\n".join(ids) + "\n")
    classes = tmp_path / "names.txt"
    classes.write_text("R\nG\nB\n")  # the same three, renamed
    argv = ["eval", "--voc-root", str(voc3), "--list", str(listed), "--quiet", "--json"]
    argv += ["--pred-dir", str(work / "rw" / "rw"), "--classes", str(classes)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert '"R"' in out and '"B"' in out and "red thing" not in out
