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
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from ..files import load_score_dict
from .transforms import (
    colour_jitter,
    long_side_size,
    normalize,
    pool_by,
    random_crop,
    random_resize_long,
    resize_maps,
)
from .voc import DatasetError, VOCDataset


class _Epoched(Dataset):
    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, index))


# -- the working size (docs/architecture.md: memory bounded by it, outputs at full size) ----
def load_working_image(
    voc: VOCDataset, image_id: str, long_side: int | None
) -> tuple[Image.Image, tuple[int, int]]:
    """The RGB image at its working size (to_long_side's) and its original (H, W).

    A JPEG at least four times the working size is decoded at a reduced scale (PIL's draft:
    1/2 to 1/8, never below twice the working size), so that a huge photo's full-resolution
    pixels are never held; below that it is decoded as it is, then resized as to_long_side.
    """
    if not long_side:
        image = voc.load_pil(image_id)
        return image, image.size[::-1]
    path = voc.image_path(image_id)
    try:
        with Image.open(path) as im:
            original = im.size
            w, h = long_side_size(original, long_side)
            im.draft(None, (2 * w, 2 * h))
            im.load()
            image = im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot decode image {str(path)!r} (id {image_id!r}): {exc}") from exc
    if image.size != (w, h):
        image = image.resize((w, h), Image.BICUBIC)
    return image, original[::-1]


def kept_size(original: tuple[int, int], long_side: int | None) -> tuple[int, int]:
    """The (h, w) at which a stage keeps an image's float maps (CAMs, scores): its original
    (H, W) unless that is larger than the working size, then the working size."""
    h, w = original
    if not long_side or max(h, w) <= long_side:
        return h, w
    return long_side_size((w, h), long_side)[::-1]


def is_image_shape(shape: tuple[int, ...], original: tuple[int, int]) -> bool:
    """Whether a map of `shape` belongs to an image of (H, W) `original`: the same size, or
    its shape at a smaller long side (kept_size's working size)."""
    shape = tuple(shape)
    if shape == tuple(original):
        return True
    if len(shape) != 2 or max(shape) >= max(original):
        return False
    return kept_size(original, max(shape)) == shape


def _row_taps(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """F.interpolate's linear taps along rows (align_corners=False): the two source rows and
    the second one's weight for each output row."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, (src - i0).float()


def argmax_at_size(scores: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 index of the largest of `scores` (n <= 256, h, w) bilinearly upsampled to
    `size` (align_corners=False), made in bands of rows: no (n, H, W) array is ever held.
    Ties go to the first index, as argmax's."""
    scores = torch.as_tensor(scores, dtype=torch.float32)
    n, h, w = scores.shape
    height, width = size
    y0, y1, wy = _row_taps(h, height)
    rows = max(1, (1 << 20) // max(1, n * width))  # a band: about 4 MB of scores
    out = torch.empty((height, width), dtype=torch.uint8)
    for top in range(0, height, rows):
        band = slice(top, min(height, top + rows))
        t = wy[band, None]
        part = scores[:, y0[band]] * (1 - t) + scores[:, y1[band]] * t  # (n, r, w)
        part = F.interpolate(part, size=width, mode="linear", align_corners=False)  # (n, r, W)
        best, index = part[0], out[band].zero_()
        for c in range(1, n):
            index.masked_fill_(part[c] > best, c)
            best = torch.maximum(best, part[c])
    return out.numpy()


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
        image, _ = load_working_image(self.voc, self.ids[index], self.long_side)
        image = random_resize_long(image, *self.resize_long, rng)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        image = colour_jitter(image, rng, *self.jitter)
        (x,) = random_crop([normalize(np.asarray(image))], self.crop_size, rng)
        return torch.from_numpy(x), torch.from_numpy(self.labels[index])


class MultiScaleDataset(Dataset):
    """CAM inference (psa infer_cls): the image (long side resized to long_side) at each scale
    (bicubic), normalised. Items: (id, [(3, h_s, w_s) float32 per scale], labels (C,),
    original (H, W)); a huge image is never decoded at full size (load_working_image)."""

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
        image, original = load_working_image(self.voc, self.ids[index], self.long_side)
        w, h = image.size
        scaled = []
        for s in self.scales:
            size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
            im = image if size == (w, h) else image.resize(size, Image.BICUBIC)
            scaled.append(torch.from_numpy(normalize(np.asarray(im))))
        return self.ids[index], scaled, torch.from_numpy(self.labels[index]), original


def image_classes(voc: VOCDataset, image_id: str) -> set[int] | None:
    """The image's classes as CAM keys (0-based: VOC class c is key c - 1), or None where the
    dataset has no image-level labels for it (no mask, annotation or cls_labels entry)."""
    try:
        return {int(c) for c in np.nonzero(voc.image_labels(image_id))[0]}
    except DatasetError:
        return None


def check_cam(
    cam: dict[int, np.ndarray],
    path: str | os.PathLike,
    image_size: tuple[int, int],
    num_classes: int,
    classes: set[int] | None,
) -> None:
    """Raise DatasetError naming the CAM file when its keys are not classes of the dataset
    (0..num_classes-1) or not the image's `classes` (None: not known), or when its maps
    are neither the image's size (H, W) nor the image's shape at a smaller long side
    (make-cam's working size)."""
    keys = sorted(int(k) for k in cam)
    outside = [k for k in keys if not 0 <= k < num_classes]
    if outside:
        raise DatasetError(
            f"CAM file {str(path)!r} has class keys {outside} outside the dataset's "
            f"{num_classes} classes (keys 0..{num_classes - 1}): it was made for another dataset"
        )
    if classes is not None and set(keys) != classes:
        raise DatasetError(
            f"CAM file {str(path)!r} has class keys {keys} but the image's classes are "
            f"{sorted(classes)} (keys are 0-based): it was made with other labels or for "
            "another image; make the CAMs again with make-cam"
        )
    shapes = {tuple(np.shape(cam[k])) for k in keys}
    for k in keys:
        shape = tuple(np.shape(cam[k]))
        if not is_image_shape(shape, image_size) or len(shapes) > 1:
            raise DatasetError(
                f"CAM file {str(path)!r}: the map of class {k} is {shape} but the image is "
                f"{tuple(image_size)}: the CAMs come from another dataset; make them again "
                "with make-cam"
            )


def load_cam(
    voc: VOCDataset, cam_path: str | os.PathLike, image_id: str, image_size: tuple[int, int]
) -> dict[int, np.ndarray]:
    """psa's CAM dict of one image, checked against the image (check_cam)."""
    cam = load_score_dict(cam_path, "CAM")
    check_cam(cam, cam_path, image_size, voc.num_classes, image_classes(voc, image_id))
    return cam


def load_cam_and_image(
    voc: VOCDataset, cam_path: str | os.PathLike, image_id: str
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """psa's CAM dict of one image (keys and shapes checked, not the image's classes) and the
    (h, w, 3) RGB image at the CAMs' size: its own, or make-cam's working size for a large
    image, decoded at a reduced scale (load_working_image)."""
    cam = load_score_dict(cam_path, "CAM")
    long_side = max(next((np.shape(v) for v in cam.values()), (0,))) or None
    image, original = load_working_image(voc, image_id, long_side)
    check_cam(cam, cam_path, original, voc.num_classes, None)
    return cam, np.asarray(image)


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
        image, original = load_working_image(self.voc, image_id, self.long_side)
        if not (is_image_shape(la.shape[1:], original) and is_image_shape(ha.shape[1:], original)):
            raise ValueError(
                f"affinity-label scores of {image_id!r} are {la.shape[1:]} but the "
                f"image is {original}: they come from another dataset"
            )
        la, ha = (resize_maps(a, image.size[::-1]) for a in (la, ha))
        x = normalize(np.asarray(colour_jitter(image, rng, *self.jitter)))
        x, la, ha = random_crop([x, la, ha], self.crop_size, rng)
        if rng.random() < 0.5:
            x, la, ha = (np.ascontiguousarray(a[..., ::-1]) for a in (x, la, ha))
        label = affinity_label_map(
            pool_by(la, self.stride), la_keys, pool_by(ha, self.stride), ha_keys
        )
        return torch.from_numpy(x), torch.from_numpy(label)
