"""MS-COCO: `affext data coco` from COCO-format files written here (polygons, RLE compressed
and not, a crowd region, gapped category ids, an image without annotations, overlaps), its
masks against the ones drawn here and against pycocotools' own decoding, its errors, and 80
classes through every stage; the coco preset; the overview's titles and legends."""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import miou_by_hand, run_args
from PIL import Image, ImageDraw

import affext
from affext import cli
from affext.data import DatasetError, VOCDataset, load_cls_labels, load_label_png, read_id_list
from affext.files import load_score_dict
from affext.reference.random_walk import torch_sparse_random_walk
from affext.stages.config import PRESETS, RunConfig
from affext.stages.make_cam import MakeCamConfig
from affext.stages.overview import write_overview
from affext.stages.train_aff import TrainAffConfig

# pycocotools' decode warns about numpy 2's copy keyword (its own code)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
needs_coco = pytest.mark.skipif(
    importlib.util.find_spec("pycocotools") is None,
    reason="pycocotools (the coco extra: pip install 'affext[coco]') is not installed",
)

# COCO's category ids: 1..90 without these ten, so 80 classes, as COCO 2014's
GAPS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
CATEGORY_IDS = [i for i in range(1, 91) if i not in GAPS]
NAMES = [f"thing {i}" if i % 7 else f"thing number {i}" for i in CATEGORY_IDS]
W, H = 56, 40


def index_of(category: int) -> int:
    return CATEGORY_IDS.index(category) + 1


# ------------------------------------------------------------------ the test's own masks
def polygon_mask(polygons: list[list[float]]) -> np.ndarray:
    """The polygons' parts filled by PIL (the test's own rasterisation)."""
    canvas = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(canvas)
    for p in polygons:
        draw.polygon(list(zip(p[::2], p[1::2])), fill=1)
    return np.asarray(canvas, bool)


def ellipse_mask(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def rle_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: run lengths in column-major order, zeros first."""
    flat = mask.T.reshape(-1).astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def compressed(mask: np.ndarray) -> str:
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


def compose(annotations: list[dict], masks: list[np.ndarray]) -> np.ndarray:
    """The mask the conversion must write (docs/method.md §9), counted per pixel: one class
    -> it; two or more classes, or a crowd region -> 255; none -> 0."""
    cover = np.zeros((H, W, 81), bool)
    crowd = np.zeros((H, W), bool)
    for ann, m in zip(annotations, masks):
        if ann["iscrowd"]:
            crowd |= m
        else:
            cover[..., index_of(ann["category_id"])] |= m
    n = cover.sum(axis=-1)
    out = np.where(n == 1, cover.argmax(axis=-1), 0).astype(np.uint8)
    out[(n > 1) | crowd] = 255
    return out


def near_an_edge(masks: list[np.ndarray]) -> np.ndarray:
    """Pixels at most one pixel (8-neighbourhood) from a mask's boundary."""
    band = np.zeros((H, W), bool)
    for m in masks:
        p = np.pad(m, 1)
        shifts = [
            p[1 + dy : 1 + dy + H, 1 + dx : 1 + dx + W] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
        ]
        band |= np.logical_or.reduce(shifts) & ~np.logical_and.reduce(shifts)
    return band


# ------------------------------------------------------------------ a COCO-format split
def split_spec(split: str) -> list[tuple[str, list[tuple[int, int, str, object]]]]:
    """[(file name, [(category id, iscrowd, kind, shape)])]: kind "poly" (a list of parts),
    "rle" (uncompressed, from a mask drawn here) or "rlez" (compressed)."""
    tri = [[4, 4, 30, 6, 10, 30]]
    two_parts = [[34, 4, 52, 4, 52, 16, 34, 16], [40, 24, 50, 24, 46, 36]]
    if split == "train":
        return [
            ("COCO_t_000001.jpg", [(1, 0, "poly", tri), (90, 0, "poly", two_parts)]),
            (
                "COCO_t_000002.jpg",
                [
                    (13, 0, "rle", ellipse_mask(20, 18, 12, 14)),
                    (1, 1, "rle", ellipse_mask(10, 44, 8, 10)),
                ],
            ),
            (
                "COCO_t_000003.jpg",
                [
                    (44, 0, "rlez", ellipse_mask(28, 40, 9, 12)),
                    (2, 0, "poly", [[2, 2, 26, 2, 26, 22, 2, 22]]),  # two classes overlap:
                    (3, 0, "poly", [[16, 12, 34, 12, 34, 30, 16, 30]]),  # 255 there
                    (3, 0, "poly", [[28, 6, 40, 6, 40, 18, 28, 18]]),  # the same class: 3
                ],
            ),
            ("COCO_t_000004.jpg", []),  # no annotation: listed apart
            ("COCO_t_000005.jpg", [(1, 0, "poly", [[10, 8, 46, 10, 40, 34, 8, 30]])]),
            ("COCO_t_000006.jpg", [(90, 0, "rlez", ellipse_mask(20, 28, 14, 20))]),
        ]
    return [
        ("COCO_v_000001.jpg", [(1, 0, "poly", [[6, 6, 40, 8, 30, 34]])]),
        ("COCO_v_000002.jpg", [(90, 0, "rle", ellipse_mask(18, 30, 12, 16)), (13, 0, "poly", tri)]),
    ]


def drawn(kind: str, shape) -> np.ndarray:
    return polygon_mask(shape) if kind == "poly" else shape


def write_split(folder: Path, split: str) -> tuple[Path, Path, dict]:
    """FOLDER/instances_SPLIT.json and FOLDER/SPLIT/*.jpg; returns them and {id: (annotations,
    masks drawn here)}."""
    rng = np.random.default_rng(len(split))
    images, annotations, truth = [], [], {}
    (folder / split).mkdir(parents=True)
    for n, (name, anns) in enumerate(split_spec(split), 1):
        rgb = rng.integers(90, 130, (H, W, 3)).astype(np.uint8)
        records, masks = [], []
        for cat, crowd, kind, shape in anns:
            m = drawn(kind, shape)
            rgb[m] = (37 * cat % 256, 91 * cat % 256, 53 * cat % 256)
            if kind == "poly":
                segmentation = [list(map(float, p)) for p in shape]
            elif kind == "rle":
                segmentation = {"size": [H, W], "counts": rle_counts(m)}
            else:
                segmentation = {"size": [H, W], "counts": compressed(m)}
            ann = {"id": 100 * n + len(records), "image_id": n, "category_id": cat}
            ann.update(
                iscrowd=crowd, segmentation=segmentation, area=float(m.sum()), bbox=[0, 0, 1, 1]
            )
            records.append(ann)
            masks.append(m)
        Image.fromarray(rgb).save(folder / split / name, quality=95)
        images.append({"id": n, "file_name": name, "height": H, "width": W})
        annotations += records
        truth[Path(name).stem] = (records, masks)
    categories = [
        {"id": i, "name": name, "supercategory": "x"} for i, name in zip(CATEGORY_IDS, NAMES)
    ]
    data = {"images": images, "annotations": annotations, "categories": categories}
    path = folder / f"instances_{split}.json"
    path.write_text(json.dumps(data))
    return path, folder / split, truth


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """Both splits written, and converted into one root (train with processes, val without)."""
    from affext.data.coco import convert_coco

    src = tmp_path_factory.mktemp("coco")
    train = write_split(src, "train")
    val = write_split(src, "val")
    root = src / "root"
    done = convert_coco(train[0], train[1], root, "train", workers=2, progress=False)
    convert_coco(val[0], val[1], root, "val", workers=0, progress=False)
    return root, src, train, val, done


# ------------------------------------------------------------------ the conversion
@needs_coco
def test_conversion_writes_the_voc_layout(coco):
    root, src, train, val, done = coco
    assert done == {"images": 6, "labeled": 5, "unlabeled": 1, "converted": 6, "classes": 80}
    assert (root / "classes.txt").read_text().splitlines() == NAMES  # category-id order
    voc = VOCDataset(root)
    assert voc.num_classes == 80 and voc.label_source == "npy"
    lists = root / "ImageSets" / "Segmentation"
    assert read_id_list(lists / "train.txt") == ["COCO_t_00000" + c for c in "12356"]
    assert read_id_list(lists / "train_unlabeled.txt") == ["COCO_t_000004"]
    assert read_id_list(lists / "val.txt") == ["COCO_v_000001", "COCO_v_000002"]
    assert not (lists / "val_unlabeled.txt").read_text()
    # the images are links to COCO's files; the labels: every annotation's class, crowd too
    table = load_cls_labels(root / "cls_labels.npy", 80)
    for truth in (train[2], val[2]):
        for image_id, (records, _) in truth.items():
            link = root / "JPEGImages" / f"{image_id}.jpg"
            assert link.is_symlink() and Path(os.readlink(link)).is_absolute()
            assert link.read_bytes() == (Path(os.readlink(link))).read_bytes()
            want = sorted({index_of(a["category_id"]) for a in records})
            assert (np.flatnonzero(table[image_id]) + 1).tolist() == want
            assert (np.flatnonzero(voc.image_labels(image_id)) + 1).tolist() == want
    assert index_of(90) == 80 and index_of(13) == 12 and index_of(44) == 40  # the gaps closed
    assert np.flatnonzero(table["COCO_t_000002"]).tolist() == [0, 11]  # crowd's class 1 too


@needs_coco
def test_masks_equal_the_drawn_ones_and_pycocotools(coco):
    from pycocotools.coco import COCO

    root, src, train, val, _ = coco
    for path, _, truth in (train, val):
        api = COCO(str(path))
        for n, (image_id, (records, masks)) in enumerate(truth.items(), 1):
            got = load_label_png(root / "SegmentationClass" / f"{image_id}.png")
            assert got.shape == (H, W)
            # pycocotools' own decoding (annToMask), composed here: equal at every pixel
            theirs = [api.annToMask(a).astype(bool) for a in api.loadAnns(api.getAnnIds(imgIds=n))]
            np.testing.assert_array_equal(got, compose(records, theirs))
            # the masks drawn here: equal, except within a pixel of a polygon's outline (PIL's
            # and pycocotools' rasterisations differ there), and there on few pixels
            own = compose(records, masks)
            polygons = [m for a, m in zip(records, masks) if isinstance(a["segmentation"], list)]
            band = near_an_edge(polygons)
            differ = got != own
            assert not (differ & ~band).any(), image_id
            assert differ.sum() <= 0.35 * max(1, band.sum()), image_id
            if not polygons:
                np.testing.assert_array_equal(got, own)  # RLEs decode exactly
    third = load_label_png(root / "SegmentationClass" / "COCO_t_000003.png")
    assert third[15, 20] == 255 and third[5, 5] == index_of(2)  # classes 2 and 3 overlap: void
    assert third[12, 30] == index_of(3) and third[28, 40] == index_of(44)  # 3 over 3: 3
    second = load_label_png(root / "SegmentationClass" / "COCO_t_000002.png")
    assert second[10, 44] == 255 and second[20, 18] == index_of(13)  # the crowd region: void
    assert not load_label_png(root / "SegmentationClass" / "COCO_t_000004.png").any()


def tree(root: Path) -> dict[str, object]:
    """Every file under ROOT: its bytes, or a link's target; config records without time."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            out[key] = ("link", os.readlink(path))
        elif path.name.endswith(".config.json"):
            record = json.loads(path.read_text())
            record.pop("time")
            out[key] = record
        elif path.is_file():
            out[key] = path.read_bytes()
    return out


@needs_coco
def test_converting_twice_gives_identical_files_and_resumes(coco, tmp_path):
    from affext.data.coco import convert_coco

    root, src, train, val, _ = coco
    again = tmp_path / "again"  # the splits in the other order, in one process, then two
    convert_coco(val[0], val[1], again, "val", workers=2, progress=False)
    convert_coco(train[0], train[1], again, "train", workers=0, progress=False)
    assert tree(again) == tree(root)
    # a rerun finds every image done; a missing mask and one of another size are redone
    before = tree(again)
    assert convert_coco(train[0], train[1], again, "train", progress=False)["converted"] == 0
    (again / "SegmentationClass" / "COCO_t_000003.png").unlink()
    Image.new("P", (5, 5)).save(again / "SegmentationClass" / "COCO_t_000005.png")
    assert convert_coco(train[0], train[1], again, "train", progress=False)["converted"] == 2
    assert tree(again) == before
    # asked for copies, a root of links gets them (the masks are rewritten, the same bytes)
    assert convert_coco(val[0], val[1], again, "val", copy=True, progress=False)["converted"] == 2
    linked = again / "JPEGImages" / "COCO_v_000002.jpg"
    assert not linked.is_symlink() and linked.read_bytes() == (val[1] / linked.name).read_bytes()
    copied = tmp_path / "copied"
    convert_coco(val[0], val[1], copied, "val", copy=True, workers=0, progress=False)
    image = copied / "JPEGImages" / "COCO_v_000001.jpg"
    assert not image.is_symlink() and image.read_bytes() == (val[1] / image.name).read_bytes()


def bad_copy(src: Path, tmp: Path, edit) -> tuple[Path, Path]:
    """The train split's files copied to TMP, the annotation data changed by edit(data)."""
    data = json.loads((src / "instances_train.json").read_text())
    edit(data)
    (tmp / "images").mkdir()
    for f in (src / "train").iterdir():
        (tmp / "images" / f.name).write_bytes(f.read_bytes())
    path = tmp / "instances_train.json"
    path.write_text(json.dumps(data))
    return path, tmp / "images"


def set_first(key: str, field: str, value):
    def edit(data):
        data[key][0][field] = value

    return edit


@needs_coco
@pytest.mark.parametrize(
    "edit, message",
    [
        (set_first("annotations", "category_id", 12), r"category_id 12, not among the file's 80"),
        (
            lambda d: d["annotations"][2]["segmentation"].update(size=[H + 1, W]),
            rf"COCO_t_000002\.jpg'.*mask's size is \[{H + 1}, {W}\].*image is \[{H}, {W}\]",
        ),
        (
            lambda d: d["annotations"][2]["segmentation"]["counts"].pop(),
            r"COCO_t_000002\.jpg'.*covers \d+ pixels, but the image has 2240",
        ),
        (
            set_first("images", "width", W + 2),
            rf"COCO_t_000001\.jpg' is {W}x{H} but .* {W + 2}x{H}",
        ),
        (set_first("annotations", "image_id", 77), "annotation 100 is of image id 77"),
        (lambda d: d.pop("annotations"), "has no 'annotations' list"),
    ],
)
def test_bad_annotations_are_errors_naming_the_file(coco, tmp_path, edit, message):
    from affext.data.coco import convert_coco

    _, src, *_ = coco
    path, images = bad_copy(src, tmp_path, edit)
    with pytest.raises(DatasetError, match=message) as err:
        convert_coco(path, images, tmp_path / "root", "train", workers=0, progress=False)
    assert str(path) in str(err.value) or str(images / "COCO_t_000001.jpg") in str(err.value)


@needs_coco
def test_a_missing_image_or_a_corrupt_file_is_an_error_naming_it(coco, tmp_path, capsys):
    from affext.data.coco import convert_coco

    _, src, *_ = coco
    path, images = bad_copy(src, tmp_path, lambda d: None)
    (images / "COCO_t_000005.jpg").unlink()
    with pytest.raises(DatasetError, match=r"1 image\(s\) .* e\.g\. \[.*COCO_t_000005\.jpg'\]"):
        convert_coco(path, images, tmp_path / "root", "train", progress=False)
    assert not (tmp_path / "root").exists()  # checked before anything is written
    path.write_text(path.read_text()[:-40])  # a truncated download
    argv = ["data", "coco", "--annotations", str(path), "--images", str(images)]
    argv += ["--out", str(tmp_path / "root"), "--split", "train", "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"cannot read COCO annotation file {str(path)!r}" in err and "Traceback" not in err
    assert cli.main([*argv[:2], "--annotations", str(tmp_path / "nope.json"), *argv[4:]]) == 2
    assert "nope.json' does not exist" in capsys.readouterr().err


def test_without_pycocotools_the_conversion_says_which_extra(tmp_path, monkeypatch):
    from affext import extras
    from affext.data.coco import convert_coco

    real = importlib.util.find_spec
    monkeypatch.setattr(
        extras.importlib.util, "find_spec", lambda m: None if m == "pycocotools" else real(m)
    )
    with pytest.raises(extras.MissingExtraError, match=r"pip install 'affext\[coco\]'"):
        convert_coco(tmp_path / "a.json", tmp_path, tmp_path / "out", progress=False)


# ------------------------------------------------------------------ 80 classes, every stage
def test_the_walk_takes_81_channels_and_skips_the_dead_ones():
    gen = torch.Generator().manual_seed(0)
    k = len(affext.neighborhood_offsets(5))
    aff = torch.rand(1, k, 12, 14, generator=gen)
    cam = torch.zeros(1, 81, 12, 14)
    cam[0, [0, 7, 80]] = torch.rand(3, 12, 14, generator=gen)
    ours = affext.random_walk(cam, aff, iterations=16)
    torch.testing.assert_close(ours, torch_sparse_random_walk(cam, aff, iterations=16))
    assert not ours[0, [c for c in range(81) if c not in (0, 7, 80)]].any()
    alone = affext.random_walk(cam[:, [0, 7, 80]], aff, iterations=16)
    assert torch.equal(ours[:, [0, 7, 80]], alone)  # the same bits, however many are dead


CHEAP = {  # every stage on 40x56 images in seconds (tiny backbone)
    "train_cam": {"epochs": 1, "batch_size": 4, "crop_size": 40, "resize_long": [40, 56]},
    "make_cam": {"long_side": 56, "scales": [1.0, 0.5]},
    "train_aff": {"epochs": 1, "batch_size": 4, "crop_size": 72, "long_side": 96},
    "make_rw": {"long_side": 96, "iterations": 8, "crf_workers": 0},
    "train_seg": {"epochs": 1, "batch_size": 4, "crop_size": 64, "long_side": 96},
    "make_seg": {"long_side": 96, "scales": [1.0], "crf_workers": 0},
}


@needs_coco
def test_every_stage_runs_on_the_80_classes(coco, tmp_path, capsys):
    root, *_ = coco
    config = tmp_path / "cheap.json"
    config.write_text(json.dumps(CHEAP))
    work = tmp_path / "work"
    extra = ["--backbone", "tiny", "--device", "cpu", "--workers", "0", "--config", str(config)]
    assert cli.main(run_args(root, work, *extra)) == 0
    metrics = json.loads((work / "metrics.json").read_text())
    voc = VOCDataset(root)
    evals = read_id_list(root / "ImageSets" / "Segmentation" / "val.txt")
    train = read_id_list(root / "ImageSets" / "Segmentation" / "train.txt")
    assert metrics["train_images"] == 5 and metrics["eval_images"] == 2
    assert list(metrics["per_class_iou"]["rw"]) == ["background", *NAMES]
    gt = [root / "SegmentationClass" / f"{i}.png" for i in evals]
    for key, folder in (("cam_miou", "make_cam/cam_pred"), ("rw_miou", "make_rw/rw")):
        pred = [work / folder / f"{i}.png" for i in evals]
        assert metrics[key] == pytest.approx(miou_by_hand(pred, gt, 81), abs=1e-3), key
    for i in train + evals:
        present = np.flatnonzero(voc.image_labels(i)).tolist()
        assert sorted(load_score_dict(work / "make_cam" / "cam" / f"{i}.npy")) == present
        rw = load_label_png(work / "make_rw" / "rw" / f"{i}.png")
        assert rw.shape == (H, W) and set(np.unique(rw)) <= {0, *(c + 1 for c in present)}
    for i in evals:
        assert load_label_png(work / "make_seg" / "seg" / f"{i}.png").shape == (H, W)
    assert (work / "overview.png").is_file()
    # the per-class table of `affext eval` stays aligned at 81 rows
    capsys.readouterr()
    argv = ["eval", "--voc-root", str(root), "--pred-dir", str(work / "make_rw" / "rw")]
    listed = root / "ImageSets" / "Segmentation" / "val.txt"
    assert cli.main([*argv, "--list", str(listed), "--quiet"]) == 0
    table = capsys.readouterr().out.splitlines()[:82]
    assert [t.split()[0] for t in table[:3]] == ["class", "background", "thing"]
    assert len({len(t) for t in table}) == 1 and table[-1].startswith("thing 90 ")


# ------------------------------------------------------------------ the coco preset
def test_the_coco_preset_over_psas_defaults(capsys):
    cfg = RunConfig.for_backbone("resnet38", preset="coco")
    cam, aff = cfg.train_cam, cfg.train_aff
    assert (cam.epochs, cam.batch_size, cam.crop_size, cam.resize_long) == (5, 16, 512, (320, 640))
    assert (cam.lr, cam.weight_decay, cam.optimizer) == (0.1, 1e-4, "sgd")
    assert (aff.epochs, aff.batch_size, aff.crop_size, aff.lr, aff.weight_decay) == (
        3,
        32,
        512,
        0.1,
        1e-4,
    )
    psa = RunConfig.for_backbone("resnet38")
    assert cfg.make_cam == psa.make_cam and cfg.make_rw == psa.make_rw  # psa's: not stated
    assert cfg.train_seg == psa.train_seg and psa.train_cam.epochs == 15
    assert cfg.make_cam.scales == MakeCamConfig().scales == (1.0, 0.5, 1.5, 2.0)
    assert set(PRESETS) == {"tiny", "coco"}
    argv = ["run", "--preset", "coco", "--backbone", "resnet50", "--print-config", "json"]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["preset"] == "coco" and printed["train_aff"]["batch_size"] == 32
    with pytest.raises(ValueError, match=r"no preset 'cocoa'; the presets are \['coco', 'tiny'\]"):
        RunConfig.for_backbone("resnet38", preset="cocoa")
    # a stage's own command takes it too
    args = cli.build_parser().parse_args(
        ["train-aff", "--voc-root", "v", "--train-list", "l", "--aff-labels", "a", "--out", "o"]
        + ["--preset", "coco", "--batch-size", "16"]
    )
    aff = cli._stage_config(TrainAffConfig, args, "train_aff", **cli._training_fields(args))
    assert (aff.epochs, aff.batch_size, aff.crop_size, aff.weight_decay) == (3, 16, 512, 1e-4)


# ------------------------------------------------------------------ the overview
def test_the_overview_has_titles_and_a_legend_per_row(tmp_path):
    from affext.data import save_label_png
    from affext.files import save_score_dict
    from affext.stages.overview import TITLES

    root = tmp_path / "voc"
    names = [f"class {c}" for c in range(1, 81)]
    (root / "JPEGImages").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    rng = np.random.default_rng(0)
    rows = {"a": (48, 64, [3, 77]), "b": (64, 40, [80])}  # two aspect ratios
    for i, (h, w, classes) in rows.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(
            root / "JPEGImages" / f"{i}.jpg"
        )
        gt = np.zeros((h, w), np.uint8)
        for k, c in enumerate(classes):
            gt[:, k * w // 3 : (k + 1) * w // 3] = c
        gt[:2] = 255
        save_label_png(root / "SegmentationClass" / f"{i}.png", gt)
        save_label_png(tmp_path / "rw" / f"{i}.png", gt)
        save_label_png(tmp_path / "seg" / f"{i}.png", np.where(gt == 255, 5, gt).astype(np.uint8))
        save_score_dict(tmp_path / "cam" / f"{i}.npy", {c - 1: rng.random((h, w)) for c in classes})
    out = write_overview(
        VOCDataset(root, label_source="mask"),
        ["a", "b"],
        tmp_path / "cam",
        tmp_path / "rw",
        tmp_path / "overview.png",
        seg_dir=tmp_path / "seg",
    )
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape[0] == 18 + 2 * (128 + 4)
    title_bar = picture[:18]
    cell = max(round(64 * 128 / 48), round(40 * 128 / 64))
    for k in range(len(TITLES)):  # a title over each of the five columns
        column = title_bar[:, k * (cell + 4) : (k + 1) * (cell + 4) - 4]
        assert (column < 128).any(), TITLES[k]
    palette = np.asarray(affext.data.voc_palette(), np.uint8).reshape(256, 3)
    legend_x = 5 * (cell + 4)
    for n, (i, (_, _, classes)) in enumerate(rows.items()):
        legend = picture[18 + n * 132 : 18 + n * 132 + 128, legend_x:]
        shown = [*classes, 255, 5]  # seg's class 5 where the ground truth is void
        for c in shown:  # a swatch of each class the row shows, void and seg's class 5 too
            assert (legend == palette[c]).all(axis=-1).sum() >= 25, (i, c)
        assert not (legend == palette[9]).all(axis=-1).any()  # and none of another class


# ------------------------------------------------------------------ the checks at COCO's size
def test_class_maps_and_image_sizes_read_without_pil_equal_pils(tmp_path):
    from affext.data import save_label_png
    from affext.data.image_files import _header_size, _plain_png, image_size

    rng = np.random.default_rng(0)
    for shape in ((1, 1), (3, 7), (48, 64)):
        values = rng.integers(0, 256, shape).astype(np.uint8)
        save_label_png(tmp_path / "p.png", values)  # PIL writes palette rows unfiltered
        assert _plain_png((tmp_path / "p.png").read_bytes()) is not None
        got = load_label_png(tmp_path / "p.png")
        np.testing.assert_array_equal(got, np.asarray(Image.open(tmp_path / "p.png")))
        got[0, 0] = 1  # a writable array, as before
        grey = Image.fromarray(values, "L")
        grey.save(tmp_path / "g.png")  # filtered rows, where PIL chooses: PIL reads them
        np.testing.assert_array_equal(load_label_png(tmp_path / "g.png"), values)
        rgb = Image.fromarray(rng.integers(0, 255, (*shape, 3), np.uint8))
        files = {"a.jpg": {}, "p.jpg": {"progressive": True}, "a.png": {}}
        files["e.jpg"] = {"exif": b"Exif\x00\x00" + bytes(5000)}  # a segment before the frame
        for name, options in files.items():
            rgb.save(tmp_path / name, **options)
            assert _header_size(tmp_path / name) == image_size(tmp_path / name) == rgb.size
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00")
    with pytest.raises(DatasetError, match="cannot read image .*bad.jpg"):
        image_size(tmp_path / "bad.jpg")


def test_mask_checks_in_processes_name_the_bad_mask(tmp_path):
    from affext.data import save_label_png
    from affext.workers import map_in_processes

    assert map_in_processes(_squares, list(range(10)), chunk=3, processes=2) == [
        i * i for i in range(10)
    ]
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"c{i}\n" for i in range(1, 81)))
    ids = [f"m{i:04d}" for i in range(1100)]
    for n, i in enumerate(ids):
        mask = np.full((3, 4), n % 81, np.uint8)
        mask[0, 0] = 255
        save_label_png(root / "SegmentationClass" / f"{i}.png", mask)
    voc = VOCDataset(root, label_source="mask")
    voc.check_masks(ids, processes=2)  # three chunks, two processes: all valid
    save_label_png(root / "SegmentationClass" / "m0700.png", np.full((3, 4), 81, np.uint8))
    with pytest.raises(DatasetError, match=r"m0700\.png' holds class index\(es\) \[81\]"):
        voc.check_masks(ids, processes=2)
    (root / "SegmentationClass" / "m0900.png").unlink()
    with pytest.raises(DatasetError, match="no ground-truth mask for 'm0900'"):
        voc.check_masks(ids, processes=2)
    assert voc.mask_paths(["m0001", "m0900"]) == [root / "SegmentationClass" / "m0001.png", None]


def _squares(chunk):
    return [i * i for i in chunk]
