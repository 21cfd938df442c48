"""One COCO image's class map from its annotations' polygons and run-length encodings
(pycocotools' mask API, the `coco` extra): the masks of `affext data coco` (coco.py's
docstring), decoded in its worker processes."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from .classes import IGNORE_INDEX, DatasetError


def _rle_string_total(counts: bytes) -> int:
    """The sum of the run lengths of a compressed COCO RLE string (its pixel count), read as
    COCO's mask API writes it: 5 bits a character from '0' (48), 0x20 continues the number,
    0x10 of the last character is its sign, and runs after the second are differences to the
    run two before."""
    runs: list[int] = []
    i = 0
    while i < len(counts):
        value, shift, more = 0, 0, True
        while more:
            c = counts[i] - 48
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            i += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return sum(runs) if all(r >= 0 for r in runs) else -1


def _annotation_rle(segmentation, height: int, width: int, where: str) -> dict | None:
    """One COCO segmentation as pycocotools' RLE (None: polygons that enclose nothing);
    annotation_mask's checks."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        polygons = [list(map(float, p)) for p in segmentation]
        if any(len(p) % 2 for p in polygons):
            raise DatasetError(f"{where}: a polygon with an odd number of coordinates")
        # fewer than three points enclose nothing (and four numbers would be read as a box)
        polygons = [p for p in polygons if len(p) >= 6]
        if not polygons:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if not (isinstance(segmentation, dict) and "counts" in segmentation):
        raise DatasetError(f"{where}: a segmentation that is neither polygons nor an RLE")
    size = [int(s) for s in segmentation.get("size", ())]
    if size != [height, width]:
        raise DatasetError(
            f"{where}: its run-length mask's size is {size} (height, width) but the "
            f"image is [{height}, {width}]: the annotation belongs to another image, or "
            "the file is corrupt"
        )
    counts = segmentation["counts"]
    if isinstance(counts, list):
        total = sum(int(c) for c in counts) if all(int(c) >= 0 for c in counts) else -1
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        counts = counts.encode() if isinstance(counts, str) else bytes(counts)
        total = _rle_string_total(counts)
        rle = {"size": size, "counts": counts}
    if total != height * width:
        raise DatasetError(
            f"{where}: its run-length mask covers {total} pixels, but the image has "
            f"{height * width} ({width}x{height}): the file is corrupt"
        )
    return rle


def _decode(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    with warnings.catch_warnings():  # pycocotools' own, about numpy 2's copy keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).view(bool)


def annotation_mask(segmentation, height: int, width: int, where: str) -> np.ndarray:
    """(height, width) bool mask of one COCO segmentation: polygons [[x0, y0, x1, ...], ...]
    (pycocotools' frPyObjects, parts merged), an uncompressed RLE {"size": [h, w], "counts":
    [...]} or a compressed one ("counts" a string). DatasetError naming `where` for an RLE of
    another size than the image's, or one whose runs do not cover it exactly."""
    rle = _annotation_rle(segmentation, height, width, where)
    return np.zeros((height, width), bool) if rle is None else _decode(rle)


def class_map(
    annotations: Sequence[tuple[int, bool, object]],
    height: int,
    width: int,
    where: str,
    ids: Sequence[object] | None = None,
) -> np.ndarray:
    """(height, width) uint8 mask of one image (this module's docstring): 0 background, c
    where only class c covers a pixel, 255 where a crowd region or two classes do.
    annotations: (class index, crowd, COCO segmentation); where, ids: what an error names
    (the image; the annotations' ids, else their positions)."""
    from pycocotools import mask as mask_utils

    label = np.zeros((height, width), np.uint8)
    void = np.zeros((height, width), bool)
    ids = range(len(annotations)) if ids is None else ids
    for ann_id, (cls, crowd, segmentation) in zip(ids, annotations):
        rle = _annotation_rle(segmentation, height, width, f"{where}, annotation {ann_id}")
        if rle is None:
            continue
        # the work within the annotation's box (an instance covers a few % of the image)
        x, y, w, h = mask_utils.toBbox(rle)
        box = np.s_[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))]
        mask, box_label, box_void = _decode(rle)[box], label[box], void[box]
        if crowd:
            box_void |= mask
            continue
        box_void |= mask & (box_label != 0) & (box_label != cls)
        box_label[mask & (box_label == 0)] = cls
    label[void] = IGNORE_INDEX
    return label
