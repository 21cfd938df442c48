"""Stage `eval`: mIoU of predicted class maps against the ground truth (docs/method.md §7)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.voc import (
    CLASS_NAMES,
    IGNORE_INDEX,
    DatasetError,
    VOCDataset,
    load_label_png,
    unique_ids,
)
from ..files import atomic_write_json, require_files
from ..records import record_config

NUM_LABELS = len(CLASS_NAMES)  # VOC's 21: background + 20 classes


@dataclass
class EvalConfig:
    # labels scored, background included; None: the dataset's C + 1
    num_classes: int | None = None
    ignore_index: int = IGNORE_INDEX
    classes: str | None = None  # classes file ("voc": VOC's 20); None: the dataset's


def label_names(num_classes: int, class_names: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Names of labels 0..num_classes-1: `class_names` (VOC's when None and num_classes is
    21), else their indices as strings."""
    if class_names is None and num_classes == NUM_LABELS:
        class_names = CLASS_NAMES
    if class_names is not None:
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} labels")
        return tuple(class_names)
    return tuple(str(i) for i in range(num_classes))


def confusion_matrix(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int = NUM_LABELS,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """(num_classes, num_classes + 1) int64 counts: rows = ground truth, columns = prediction.

    Pixels whose ground truth is `ignore_index` are left out. The last column counts
    predictions outside [0, num_classes) (a 255 in a prediction): misses for their class.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    keep = gt != ignore_index
    g = gt[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    if g.size and g.max() >= num_classes:
        raise ValueError(f"ground truth holds class {int(g.max())} >= {num_classes}")
    p = np.where((p >= 0) & (p < num_classes), p, num_classes)
    n = num_classes + 1
    return np.bincount(g * n + p, minlength=num_classes * n).reshape(num_classes, n)


def scores_from_confusion(conf: np.ndarray, class_names: tuple[str, ...] | None = None) -> dict:
    """IoU, precision and recall per class, and their means, in percent, from
    confusion_matrix's counts; class_names: label_names' (VOC's for 21 labels).

    A class with no ground truth and no prediction (union 0) has no IoU (None) and is left
    out of the mean, as the VOC evaluation does for empty classes.
    """
    conf = conf.astype(np.float64)
    k = conf.shape[0]
    class_names = label_names(k, class_names)
    tp = np.diag(conf[:, :k])
    gt_count = conf.sum(axis=1)
    pred_count = conf[:, :k].sum(axis=0)
    union = gt_count + pred_count - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        precision = np.where(pred_count > 0, tp / pred_count, np.nan)
        recall = np.where(gt_count > 0, tp / gt_count, np.nan)
    total = gt_count.sum()

    def table(values):
        return {
            name: (None if np.isnan(v) else round(100.0 * float(v), 3))
            for name, v in zip(class_names, values)
        }

    def mean(values):
        return None if np.all(np.isnan(values)) else round(100.0 * float(np.nanmean(values)), 3)

    return {
        "miou": mean(iou),
        "mean_precision": mean(precision),
        "mean_recall": mean(recall),
        "pixel_accuracy": round(100.0 * float(tp.sum() / total), 3) if total else None,
        "iou": table(iou),
        "precision": table(precision),
        "recall": table(recall),
        "classes_counted": int(np.sum(union > 0)),
    }


def evaluate_arrays(
    pairs,
    num_classes: int = NUM_LABELS,
    ignore_index: int = IGNORE_INDEX,
    class_names: tuple[str, ...] | None = None,
) -> dict:
    """Scores over an iterable of (pred, gt) (H, W) arrays; num_classes labels, background
    included (class_names: their names, label_names')."""
    conf = np.zeros((num_classes, num_classes + 1), np.int64)
    n = 0
    for pred, gt in pairs:
        conf += confusion_matrix(pred, gt, num_classes, ignore_index)
        n += 1
    out = scores_from_confusion(conf, class_names)
    out["images"] = n
    return out


def evaluate(
    voc_root: str | os.PathLike,
    pred_dir: str | os.PathLike,
    ids: list[str],
    out_json: str | os.PathLike | None = None,
    config: EvalConfig | None = None,
    progress: bool = True,
) -> dict:
    """mIoU (and per-class IoU, precision, recall) of PRED_DIR/<id>.png over `ids`, over the
    dataset's classes (each id once: a repeated one is scored once, with a warning).

    Returns the scores dict; writes it to `out_json` when given (with the config next to it).
    A ground truth with a class outside the dataset's, or a prediction of another size than
    its ground truth, raises DatasetError naming the file.
    """
    cfg = config or EvalConfig()
    data = VOCDataset(voc_root, label_source="mask", classes=cfg.classes)
    ids = unique_ids(ids)
    num_labels = data.num_classes + 1
    if cfg.num_classes is not None and cfg.num_classes != num_labels:
        raise ValueError(
            f"EvalConfig.num_classes is {cfg.num_classes} but the dataset has {num_labels} "
            "labels (background and its classes): leave it unset"
        )
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DatasetError(f"prediction folder {str(pred_dir)!r} does not exist")
    require_files(
        ids,
        [pred_dir / "{}.png"],
        "predictions",
        "run the stage that writes them first",
        error=DatasetError,
    )
    no_gt = [i for i, p in zip(ids, data.mask_paths(ids)) if p is None]
    if no_gt:
        raise DatasetError(f"{len(no_gt)} image(s) have no ground-truth mask, e.g. {no_gt[:3]}")

    def pairs():
        for i in tqdm(ids, desc=f"eval {pred_dir.name}", disable=not progress):
            pred = load_label_png(pred_dir / f"{i}.png")
            gt = data.check_mask(i)
            if pred.shape != gt.shape:
                raise DatasetError(
                    f"prediction {str(pred_dir / f'{i}.png')!r} is {pred.shape[1]}x"
                    f"{pred.shape[0]} but the ground truth {str(data.mask_path(i))!r} of "
                    f"image {i!r} is {gt.shape[1]}x{gt.shape[0]}: it belongs to another image "
                    "or dataset"
                )
            yield pred, gt

    result = evaluate_arrays(pairs(), num_labels, cfg.ignore_index, data.class_names)
    if out_json is not None:
        atomic_write_json(out_json, result)
        record_config(Path(out_json).parent, "eval", cfg)
    return result
