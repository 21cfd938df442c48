"""torch Datasets of the pipeline stages (decoding and augmentation run in DataLoader workers).

Training datasets draw their augmentation from np.random.default_rng((seed, epoch, index)),
so an epoch resumed after an interruption is the same epoch, whatever the worker count.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..files import load_score_dict
from .transforms import (
    colour_jitter,
    normalize,
    pool_by,
    random_crop,
    random_resize_long,
    resize_maps,
    to_long_side,
)
from .voc import VOCDataset


class _Epoched(Dataset):
    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, index))


class ClsTrainDataset(_Epoched):
    """Classifier training (psa train_cls): random long-side resize, flip, colour jitter,
    normalisation, random crop. Items: (image (3, S, S) float32, labels (C,) float32)."""

    def __init__(
        self,
        voc: VOCDataset,
        ids: Sequence[str],
        labels: np.ndarray,
        resize_long: tuple[int, int],
        crop_size: int,
        jitter: tuple[float, ...],
        seed: int = 0,
        long_side: int | None = None,
    ):
        self.voc, self.ids, self.labels = voc, list(ids), np.asarray(labels, np.float32)
        self.resize_long, self.crop_size, self.jitter, self.seed = (
            resize_long,
            crop_size,
            jitter,
            seed,
        )
        self.long_side = long_side

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        rng = self._rng(index)
        image = to_long_side(self.voc.load_pil(self.ids[index]), self.long_side)
        image = random_resize_long(image, *self.resize_long, rng)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        image = colour_jitter(image, rng, *self.jitter)
        (x,) = random_crop([normalize(np.asarray(image))], self.crop_size, rng)
        return torch.from_numpy(x), torch.from_numpy(self.labels[index])


class MultiScaleDataset(Dataset):
    """CAM inference (psa infer_cls): the image (long side resized to long_side) at each scale
    (bicubic), normalised. Items: (id, [(3, h_s, w_s) float32 per scale], labels (C,),
    original (H, W))."""

    def __init__(
        self,
        voc: VOCDataset,
        ids: Sequence[str],
        labels: np.ndarray,
        scales: Sequence[float],
        long_side: int | None = None,
    ):
        self.voc, self.ids, self.labels, self.scales = voc, list(ids), labels, tuple(scales)
        self.long_side = long_side

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image = self.voc.load_pil(self.ids[index])
        original = image.size[::-1]
        image = to_long_side(image, self.long_side)
        w, h = image.size
        scaled = []
        for s in self.scales:
            size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
            im = image if size == (w, h) else image.resize(size, Image.BICUBIC)
            scaled.append(torch.from_numpy(normalize(np.asarray(im))))
        return self.ids[index], scaled, torch.from_numpy(self.labels[index]), original


def affinity_label_map(
    la: np.ndarray, la_keys: Sequence[int], ha: np.ndarray, ha_keys: Sequence[int]
) -> np.ndarray:
    """AffinityNet's training label map from the la / ha dCRF scores (docs/method.md §2).

    la: (n_la, h, w) and ha: (n_ha, h, w) scores (already cropped and pooled), whose channels
    are the classes la_keys / ha_keys (0 = background, c = VOC class c). Returns (h, w) uint8:
    the la argmax class where it is foreground (confident foreground), 0 where the ha argmax is
    background (confident background), 255 elsewhere and where no score exists (padding).
    """
    la_keys = np.asarray(la_keys, np.uint8)
    ha_keys = np.asarray(ha_keys, np.uint8)
    la_arg = la_keys[np.argmax(la, axis=0)]
    ha_arg = ha_keys[np.argmax(ha, axis=0)]
    label = la_arg.copy()
    label[la_arg == 0] = 255
    label[ha_arg == 0] = 0
    no_score = np.maximum(la.max(axis=0), ha.max(axis=0)) < 1e-5
    label[no_score] = 255
    return label


def _load_scores(path: Path) -> tuple[list[int], np.ndarray]:
    table = load_score_dict(path, "affinity-label score")
    keys = sorted(table)
    return keys, np.stack([np.asarray(table[k], np.float32) for k in keys])


class AffTrainDataset(_Epoched):
    """AffinityNet training (psa train_aff): colour jitter, normalisation, joint random crop
    and flip of image and la/ha scores, scores pooled by 8, label map of docs/method.md §2.
    Items: (image (3, S, S) float32, labels (S/8, S/8) uint8)."""

    def __init__(
        self,
        voc: VOCDataset,
        ids: Sequence[str],
        la_dir: str | os.PathLike,
        ha_dir: str | os.PathLike,
        crop_size: int,
        jitter: tuple[float, ...],
        stride: int = 8,
        seed: int = 0,
        long_side: int | None = None,
    ):
        if crop_size % stride:
            raise ValueError(f"crop_size {crop_size} must be a multiple of the stride {stride}")
        self.voc, self.ids = voc, list(ids)
        self.la_dir, self.ha_dir = Path(la_dir), Path(ha_dir)
        self.crop_size, self.jitter, self.stride, self.seed = crop_size, jitter, stride, seed
        self.long_side = long_side

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        rng = self._rng(index)
        image_id = self.ids[index]
        la_keys, la = _load_scores(self.la_dir / f"{image_id}.npy")
        ha_keys, ha = _load_scores(self.ha_dir / f"{image_id}.npy")
        image = self.voc.load_pil(image_id)
        if la.shape[1:] != image.size[::-1] or ha.shape[1:] != image.size[::-1]:
            raise ValueError(
                f"affinity-label scores of {image_id!r} are {la.shape[1:]} but the "
                f"image is {image.size[::-1]}: they come from another dataset"
            )
        image = to_long_side(image, self.long_side)
        la, ha = (resize_maps(a, image.size[::-1]) for a in (la, ha))
        x = normalize(np.asarray(colour_jitter(image, rng, *self.jitter)))
        x, la, ha = random_crop([x, la, ha], self.crop_size, rng)
        if rng.random() < 0.5:
            x, la, ha = (np.ascontiguousarray(a[..., ::-1]) for a in (x, la, ha))
        label = affinity_label_map(
            pool_by(la, self.stride), la_keys, pool_by(ha, self.stride), ha_keys
        )
        return torch.from_numpy(x), torch.from_numpy(label)
