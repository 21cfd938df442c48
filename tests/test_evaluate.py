"""mIoU, per-class IoU, precision and recall (docs/method.md §7)."""

import numpy as np
import pytest
from helpers import small_voc

from affext.data import read_id_list, save_label_png
from affext.data.voc import DatasetError, VOCDataset
from affext.stages.evaluate import (
    confusion_matrix,
    evaluate,
    evaluate_arrays,
    scores_from_confusion,
)


def test_confusion_ignores_255_and_counts_out_of_range_predictions():
    gt = np.array([[0, 0, 1, 255]], np.uint8)
    pred = np.array([[0, 1, 255, 1]], np.uint8)
    conf = confusion_matrix(pred, gt, num_classes=3)
    assert conf.shape == (3, 4)
    assert conf[0, 0] == 1 and conf[0, 1] == 1 and conf[1, 3] == 1 and conf.sum() == 3


def test_scores_by_hand():
    # gt:   0 0 0 1 1 2 ; pred: 0 0 1 1 2 2
    gt = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    out = scores_from_confusion(confusion_matrix(pred, gt, 3), ("bg", "a", "b"))
    # bg: tp 2, union 3; a: tp 1, union 3 (gt 2 + pred 2 - 1); b: tp 1, union 2
    assert out["iou"] == {
        "bg": pytest.approx(200 / 3, abs=1e-3),
        "a": pytest.approx(100 / 3, abs=1e-3),
        "b": 50.0,
    }
    assert out["miou"] == pytest.approx((200 / 3 + 100 / 3 + 50) / 3, abs=1e-3)
    assert out["precision"] == {"bg": 100.0, "a": 50.0, "b": 50.0}
    assert out["recall"] == {"bg": pytest.approx(200 / 3, abs=1e-3), "a": 50.0, "b": 100.0}
    assert out["pixel_accuracy"] == pytest.approx(400 / 6, abs=1e-3)


def test_absent_classes_are_left_out_of_the_mean():
    gt = np.zeros((4, 4), np.uint8)
    gt[:2] = 15
    out = evaluate_arrays([(gt.copy(), gt)])
    assert out["miou"] == 100.0 and out["classes_counted"] == 2
    assert out["iou"]["person"] == 100.0 and out["iou"]["cat"] is None


def test_evaluate_folder(tmp_path):
    root = small_voc(tmp_path / "voc", 3, 0, size=(40, 48))
    ids = read_id_list(root / "ImageSets/Segmentation/train.txt")
    voc = VOCDataset(root)
    for i in ids:
        save_label_png(tmp_path / "pred" / f"{i}.png", np.zeros_like(voc.load_mask(i)))
    out = evaluate(root, tmp_path / "pred", ids, tmp_path / "scores.json", progress=False)
    assert out["iou"]["background"] > 0 and out["recall"]["background"] == 100.0
    assert out["images"] == 3 and (tmp_path / "scores.json").is_file()
    assert (tmp_path / "eval.config.json").is_file()
    gt = np.concatenate([voc.load_mask(i).ravel() for i in ids])
    bg_iou = 100 * np.sum(gt == 0) / np.sum(gt != 255)
    assert out["iou"]["background"] == pytest.approx(bg_iou, abs=1e-3)
    (tmp_path / "pred" / f"{ids[0]}.png").unlink()
    with pytest.raises(DatasetError, match="missing predictions for"):
        evaluate(root, tmp_path / "pred", ids, progress=False)


def test_scores_over_another_class_count_carry_its_names(tmp_path):
    gt = np.array([[0, 1, 2, 3]], np.uint8)
    pred = np.array([[0, 1, 3, 3]], np.uint8)
    names = ("background", "a", "b", "c")
    out = evaluate_arrays([(pred, gt)], num_classes=4, class_names=names)
    assert out["iou"] == {"background": 100.0, "a": 100.0, "b": 0.0, "c": 50.0}
    assert tuple(evaluate_arrays([(pred, gt)], num_classes=4)["iou"]) == ("0", "1", "2", "3")
    with pytest.raises(ValueError, match="3 class names for 4 labels"):
        evaluate_arrays([(pred, gt)], num_classes=4, class_names=names[:3])
    # a dataset's own classes name the scores of evaluate (the synthetic set's six)
    root = small_voc(tmp_path / "voc", 2, 0, size=(40, 48))
    ids = read_id_list(root / "ImageSets/Segmentation/train.txt")
    voc = VOCDataset(root)
    for i in ids:
        save_label_png(tmp_path / "pred" / f"{i}.png", voc.load_mask(i))
    out = evaluate(root, tmp_path / "pred", ids, progress=False)
    assert tuple(out["iou"]) == voc.class_names and len(voc.class_names) == 7
    assert out["miou"] == 100.0
