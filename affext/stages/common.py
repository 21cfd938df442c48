"""What every stage shares: devices, workers, seeds, resuming, the CAM inputs. The files
themselves (atomic writes, config records, score files) are affext.files'."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..data.voc import NUM_CLASSES, VOCDataset
from ..files import missing_files, require_files
from ..workers import die_with_parent  # noqa: F401 - the stages' worker initialiser


def resolve_device(device: str | torch.device | None) -> torch.device:
    """ "auto"/None -> cuda when available, else cpu; a clear error for an unusable device."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} was asked for but CUDA is not available here; use --device cpu"
        )
    return dev


def default_workers() -> int:
    """DataLoader workers for image decoding: up to 4, fewer on small machines."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def require_cams(cam_dir: str | os.PathLike, ids: Iterable[str]) -> None:
    """Raise FileNotFoundError naming the ids that have no CAM file CAM_DIR/<id>.npy."""
    require_files(ids, [Path(cam_dir) / "{}.npy"], "CAMs", "run make-cam on them first")


def image_labels(voc: VOCDataset, ids: Sequence[str]) -> np.ndarray:
    """(N, C) image-level labels of ids (raises for an id with no image)."""
    voc.check_ids(ids)
    if not ids:
        return np.zeros((0, voc.num_classes), np.float32)
    return np.stack([voc.image_labels(i) for i in ids])


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def pending(
    ids: Iterable[str], templates: Iterable[str | os.PathLike], overwrite: bool = False
) -> list[str]:
    """The ids whose outputs are not all there yet (per-image stages skip finished ones).

    templates: output paths with "{}" for the image id, e.g. "work/cam/{}.npy".
    """
    ids = list(ids)
    return ids if overwrite else missing_files(ids, templates)


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


class StageTimer:
    """Wall time of a stage, for metrics.json."""

    def __init__(self):
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
