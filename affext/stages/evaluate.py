"""Stage `eval`: mIoU of predicted class maps against the ground truth (docs/method.md §7)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.voc import CLASS_NAMES, IGNORE_INDEX, DatasetError, VOCDataset, load_label_png
from ..files import atomic_write_json, record_config, require_files

NUM_LABELS = len(CLASS_NAMES)  # 21: background + 20 classes


@dataclass
class EvalConfig:
    num_classes: int = NUM_LABELS
    ignore_index: int = IGNORE_INDEX


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


def scores_from_confusion(conf: np.ndarray, class_names: tuple[str, ...] = CLASS_NAMES) -> dict:
    """IoU, precision and recall per class, and their means, in percent, from
    confusion_matrix's counts.

    A class with no ground truth and no prediction (union 0) has no IoU (None) and is left
    out of the mean, as the VOC evaluation does for empty classes.
    """
    conf = conf.astype(np.float64)
    k = conf.shape[0]
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


def evaluate_arrays(pairs, num_classes: int = NUM_LABELS, ignore_index: int = IGNORE_INDEX) -> dict:
    """Scores over an iterable of (pred, gt) (H, W) arrays."""
    conf = np.zeros((num_classes, num_classes + 1), np.int64)
    n = 0
    for pred, gt in pairs:
        conf += confusion_matrix(pred, gt, num_classes, ignore_index)
        n += 1
    out = scores_from_confusion(conf)
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
    """mIoU (and per-class IoU, precision, recall) of PRED_DIR/<id>.png over `ids`.

    Returns the scores dict; writes it to `out_json` when given (with the config next to it).
    """
    cfg = config or EvalConfig()
    data = VOCDataset(voc_root, label_source="mask")
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
    no_gt = [i for i in ids if data.mask_path(i) is None]
    if no_gt:
        raise DatasetError(f"{len(no_gt)} image(s) have no ground-truth mask, e.g. {no_gt[:3]}")

    def pairs():
        for i in tqdm(ids, desc=f"eval {pred_dir.name}", disable=not progress):
            yield load_label_png(pred_dir / f"{i}.png"), data.load_mask(i)

    result = evaluate_arrays(pairs(), cfg.num_classes, cfg.ignore_index)
    if out_json is not None:
        atomic_write_json(out_json, result)
        record_config(Path(out_json).parent, "eval", cfg)
    return result
