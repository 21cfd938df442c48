"""overview.png of `affext run`: one row per image: image | ground truth | CAM | random walk
(| segmentation network)."""

from __future__ import annotations

import contextlib
import glob
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.datasets import load_working_image
from ..data.transforms import resize_maps
from ..data.voc import VOCDataset, load_label_png, voc_palette
from ..files import atomic_save, load_score_dict
from .common import cam_stack


def _colour(label: np.ndarray) -> np.ndarray:
    palette = np.asarray(voc_palette(), np.uint8).reshape(256, 3)
    return palette[label]


def _cam_picture(rgb: np.ndarray, cam: dict[int, np.ndarray], num_classes: int) -> np.ndarray:
    """The image darkened, with each class's CAM (brought to the image's size) painted in its
    palette colour."""
    h, w = rgb.shape[:2]
    shape = next((np.shape(v) for v in cam.values()), (h, w))
    cams = resize_maps(cam_stack(cam, shape, num_classes), (h, w))
    top = cams.max(axis=0)[..., None]
    colour = _colour((cams.argmax(axis=0) + 1).astype(np.uint8)).astype(np.float32)
    out = (
        rgb.astype(np.float32) * 0.35 * (1 - top)
        + colour * top
        + rgb.astype(np.float32) * 0.35 * top
    )
    return np.clip(out, 0, 255).astype(np.uint8)


def write_overview(
    voc: VOCDataset,
    ids: Sequence[str],
    cam_dir: str | os.PathLike,
    rw_dir: str | os.PathLike,
    out: str | os.PathLike,
    height: int = 128,
    seg_dir: str | os.PathLike | None = None,
) -> Path:
    """overview.png: one row per image: image | ground truth | CAM | random walk, and the
    segmentation network's prediction from SEG_DIR/<id>.png when seg_dir is given."""
    rows = []
    for image_id in ids:
        # every panel made at its size in the picture: a huge image costs no more than that
        with Image.open(voc.image_path(image_id)) as im:
            w, h = im.size
        size = (max(1, int(round(w * height / h))), height)
        rgb = np.asarray(load_working_image(voc, image_id, max(size))[0].resize(size))
        gt = voc.load_mask(image_id) if voc.mask_path(image_id) else np.zeros((h, w), np.uint8)
        cam = load_score_dict(Path(cam_dir) / f"{image_id}.npy", "CAM")
        rw = load_label_png(Path(rw_dir) / f"{image_id}.png")
        panels = [rgb, _colour(gt), _cam_picture(rgb, cam, voc.num_classes), _colour(rw)]
        if seg_dir is not None:
            panels.append(_colour(load_label_png(Path(seg_dir) / f"{image_id}.png")))
        panels = [np.asarray(Image.fromarray(p).resize(size, Image.NEAREST)) for p in panels]
        gap = np.full((height, 4, 3), 255, np.uint8)
        rows.append(np.concatenate(sum(([p, gap] for p in panels), [])[:-1], axis=1))
    if not rows:
        raise ValueError("no images for the overview")
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    picture = Image.fromarray(np.concatenate(rows, axis=0))
    _save_png(picture, Path(out))
    return Path(out)


def _save_png(picture: Image.Image, out: Path) -> None:
    """Write the PNG atomically, encoded before its temporary file exists (a kill while
    encoding leaves nothing behind), and remove the temporaries of out that an earlier run,
    killed between creating one and renaming it, left (atomic_save's ".<name>.*.tmp")."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = buffer.getvalue()
    for stray in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stray.unlink()
    atomic_save(out, lambda f: f.write(data))


__all__ = ["write_overview"]
