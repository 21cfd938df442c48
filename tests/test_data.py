"""The VOC-layout reader, the synthetic dataset, the transforms and the affinity label map."""

from pathlib import Path

import numpy as np
import pytest
from helpers import small_voc
from PIL import Image

from affext.data import (
    VOC_CLASSES,
    DatasetError,
    VOCDataset,
    load_label_png,
    read_id_list,
    save_label_png,
    voc_palette,
)
from affext.data.datasets import AffTrainDataset, affinity_label_map
from affext.data.synth import SYNTH_CLASSES
from affext.data.transforms import colour_jitter, crop_box, normalize, pool_by, random_crop
from affext.files import save_score_dict


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return small_voc(tmp_path_factory.mktemp("voc"), 6, 2, size=(48, 64))


def test_palette_matches_voc_colours():
    pal = np.asarray(voc_palette()).reshape(256, 3)
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]  # aeroplane
    assert pal[15].tolist() == [192, 128, 128]  # person
    assert pal[255].tolist() == [224, 224, 192]  # void


def test_label_png_round_trip_keeps_indices_and_palette(tmp_path):
    label = np.array([[0, 1, 20], [255, 7, 0]], np.uint8)
    save_label_png(tmp_path / "a.png", label)
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode == "P"
        assert im.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
    np.testing.assert_array_equal(load_label_png(tmp_path / "a.png"), label)
    assert not list(tmp_path.glob("*.tmp"))


def test_read_id_list_accepts_ids_and_psa_lines(tmp_path):
    f = tmp_path / "l.txt"
    f.write_text(
        "2007_000032\n\n# comment\n/JPEGImages/2007_000039.jpg "
        "/SegmentationClassAug/2007_000039.png\n  2008_000001  \n"
    )
    assert read_id_list(f) == ["2007_000032", "2007_000039", "2008_000001"]
    with pytest.raises(DatasetError, match="does not exist"):
        read_id_list(tmp_path / "nope.txt")


def test_synthetic_dataset_layout_and_labels_agree(synth):
    ids = read_id_list(synth / "ImageSets/Segmentation/train.txt")
    assert len(ids) == 6 and len(read_id_list(synth / "ImageSets/Segmentation/val.txt")) == 2
    xml = VOCDataset(synth, label_source="xml")
    mask = VOCDataset(synth, label_source="mask")
    for i in ids:
        image = xml.load_image(i)
        gt = xml.load_mask(i)
        assert image.dtype == np.uint8 and image.shape[:2] == gt.shape
        assert 48 <= gt.shape[0] <= 64
        # every object named in the XML is drawn in the mask, and only those
        np.testing.assert_array_equal(xml.image_labels(i), mask.image_labels(i))
        assert xml.image_labels(i).sum() >= 1
        # the set declares its own six classes (classes.txt): indices 1..6
        assert xml.classes == SYNTH_CLASSES and xml.image_labels(i).shape == (6,)
        assert set(np.unique(gt)) <= {0, 255} | set(range(1, 7))


def test_synthetic_dataset_is_deterministic(synth, tmp_path):
    again = small_voc(tmp_path / "again", 6, 2, size=(48, 64))
    for sub in (
        "JPEGImages/synth_00003.jpg",
        "SegmentationClass/synth_00003.png",
        "Annotations/synth_00003.xml",
    ):
        assert (synth / sub).read_bytes() == (again / sub).read_bytes()


def test_cls_labels_npy_source(synth, tmp_path):
    table = {"synth_00000": np.eye(6, dtype=np.float32)[3]}  # the set's 6 classes
    np.save(tmp_path / "cls_labels.npy", table)
    voc = VOCDataset(synth, label_source="auto", cls_labels=tmp_path / "cls_labels.npy")
    assert voc.label_source == "npy"
    np.testing.assert_array_equal(voc.image_labels("synth_00000"), table["synth_00000"])
    with pytest.raises(DatasetError, match="not in the cls_labels"):
        voc.image_labels("synth_00001")


def test_xml_labels_every_object_name(tmp_path):
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "Annotations" / "x.xml").write_text(
        "<annotation><object><name>dog</name><part><name>head</name></part></object>"
        "<object><name>person</name></object><object><name>dog</name></object></annotation>"
    )
    voc = VOCDataset(root)
    assert voc.label_source == "xml"
    vec = voc.image_labels("x")
    assert np.nonzero(vec)[0].tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]


def test_reader_errors_name_the_problem(synth, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        VOCDataset(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no JPEGImages"):
        VOCDataset(tmp_path)
    voc = VOCDataset(synth)
    with pytest.raises(DatasetError, match="unknown image id 'nope'"):
        voc.load_image("nope")
    with pytest.raises(DatasetError, match=r"unknown image id\(s\) \['nope'\]"):
        voc.check_ids(["synth_00000", "nope"])
    bad = tmp_path / "bad"
    (bad / "JPEGImages").mkdir(parents=True)
    (bad / "JPEGImages" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DatasetError, match="cannot decode image"):
        VOCDataset(bad, label_source="mask").load_image("broken")


def test_normalize_and_crop():
    image = np.full((5, 7, 3), 255, np.uint8)
    x = normalize(image)
    assert x.shape == (3, 5, 7)
    np.testing.assert_allclose(
        x[:, 0, 0],
        (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
        rtol=1e-6,
    )
    rng = np.random.default_rng(0)
    a = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)
    (c,) = random_crop([a], 6, rng)
    # width 7 > 6: one column dropped; height 5 < 6: one empty row
    assert c.shape == (2, 6, 6) and (c == 0).all(axis=(0, 2)).sum() >= 1
    dst_r, dst_c, src_r, src_c = crop_box(5, 7, 6, np.random.default_rng(1))
    assert dst_r.stop - dst_r.start == 5 and src_c.stop - src_c.start == 6


def test_colour_jitter_is_seeded_and_keeps_size():
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (9, 11, 3), np.uint8))
    a = np.asarray(colour_jitter(im, np.random.default_rng(5)))
    b = np.asarray(colour_jitter(im, np.random.default_rng(5)))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (9, 11, 3) and not np.array_equal(a, np.asarray(im))


def test_affinity_label_map_follows_method_section_2():
    # la: bg, class 3 (key 3); ha: bg, class 3. Four pixels.
    la = np.array([[[0.9, 0.2, 0.1, 0.0]], [[0.1, 0.8, 0.9, 0.0]]], np.float32)
    ha = np.array([[[0.95, 0.7, 0.2, 0.0]], [[0.05, 0.3, 0.8, 0.0]]], np.float32)
    label = affinity_label_map(la, [0, 3], ha, [0, 3])
    # px0: la bg, ha bg -> 0; px1: la fg, ha bg -> 0 (confident bg wins);
    # px2: la fg, ha fg -> 3; px3: no score -> 255
    assert label.tolist() == [[0, 0, 3, 255]]
    la2 = np.array([[[0.6]], [[0.4]]], np.float32)
    ha2 = np.array([[[0.3]], [[0.7]]], np.float32)
    assert affinity_label_map(la2, [0, 5], ha2, [0, 5]).tolist() == [[255]]  # neutral


def test_pool_by_is_block_mean():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    np.testing.assert_allclose(pool_by(x, 2)[0], [[2.5, 4.5], [10.5, 12.5]])


def test_aff_dataset_items(synth, tmp_path):
    voc = VOCDataset(synth)
    ids = ["synth_00000", "synth_00001"]
    for d in ("la", "ha"):
        for i in ids:
            h, w = voc.load_image(i).shape[:2]
            scores = {0: np.full((h, w), 0.6, np.float32), 8: np.full((h, w), 0.4, np.float32)}
            save_score_dict(tmp_path / d / f"{i}.npy", scores)
    ds = AffTrainDataset(
        voc,
        ids,
        tmp_path / "la",
        tmp_path / "ha",
        crop_size=64,
        jitter=(0.3, 0.3, 0.3, 0.1),
        seed=3,
    )
    x, label = ds[0]
    assert x.shape == (3, 64, 64) and label.shape == (8, 8)
    # background everywhere there is a score; padding (if any) is 255
    assert set(np.unique(label.numpy())) <= {0, 255} and (label.numpy() == 0).any()
    x2, _ = ds[0]
    assert (x == x2).all()  # same epoch, same index, same augmentation
    ds.set_epoch(1)
    assert not (ds[0][0] == x).all()
