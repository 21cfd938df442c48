"""The CAMs as the stages after make-cam read them: the check that every image has its CAM
file, psa's per-image CAM dict as one (C, H, W) array, and psa's background score."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..data.voc import NUM_CLASSES
from ..files import require_files


def require_cams(cam_dir: str | os.PathLike, ids: Iterable[str]) -> None:
    """Raise FileNotFoundError naming the ids that have no CAM file CAM_DIR/<id>.npy."""
    require_files(ids, [Path(cam_dir) / "{}.npy"], "CAMs", "run make-cam on them first")


def cam_stack(
    cam: dict[int, np.ndarray], shape: tuple[int, int], num_classes: int = NUM_CLASSES
) -> np.ndarray:
    """(C, H, W) float32 array from psa's CAM dict {class_index 0..C-1: (H, W)}; a key
    outside 0..C-1 raises ValueError (the CAMs are another dataset's)."""
    out = np.zeros((num_classes,) + tuple(shape), np.float32)
    for k, v in cam.items():
        if not 0 <= int(k) < num_classes:
            raise ValueError(
                f"CAM of class index {int(k)}, but the dataset has {num_classes} classes "
                f"(0..{num_classes - 1}): the CAMs come from another dataset"
            )
        out[int(k)] = v
    return out


def background_score(cams: np.ndarray, alpha: float) -> np.ndarray:
    """M_bg = (1 - max_c M_c) ** alpha (docs/method.md §1); cams (C, H, W), C may be 0."""
    peak = cams.max(axis=0) if len(cams) else np.zeros(cams.shape[1:], np.float32)
    return np.power(np.clip(1.0 - peak, 0.0, 1.0), alpha).astype(np.float32)
