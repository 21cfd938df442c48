"""What every stage shares: devices, workers, seeds, image labels, resuming, timing. The CAM
inputs are affext.stages.cams'; the files themselves (atomic writes, score files) are
affext.files', the config records affext.records'."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from ..data.voc import VOCDataset
from ..files import missing_files
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


class StageTimer:
    """Wall time of a stage, for metrics.json."""

    def __init__(self):
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
