"""overview.png of `affext run`: column titles, then one row per image: image | ground truth |
CAM | random walk (| segmentation network), and a legend of the row's classes."""

from __future__ import annotations

import contextlib
import glob
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.datasets import load_working_image
from ..data.transforms import resize_maps
from ..data.voc import VOCDataset, load_label_png, voc_palette
from ..files import atomic_save, load_score_dict
from .cams import cam_stack


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


TITLES = ("image", "ground truth", "CAM", "random walk", "segmentation")
_GAP = 4  # white pixels between panels and rows
_LINE = 14  # a legend line's height (and a swatch's size + 4)
_TITLE = 18  # the title bar's height


def _font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow before 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _legend(classes: Sequence[int], names: Sequence[str], height: int) -> np.ndarray:
    """(height, w, 3) white panel: a colour swatch and the name of each class index, in
    columns of as many lines as fit the height."""
    font = _font()
    per_column = max(1, (height - 2) // _LINE)
    columns = [classes[i : i + per_column] for i in range(0, len(classes), per_column)]
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [
        max((draw.textlength(names[c], font=font) for c in column), default=0) + _LINE + 8
        for column in columns
    ]
    canvas = Image.new("RGB", (max(1, int(sum(widths))), height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    palette = np.asarray(voc_palette(), np.uint8).reshape(256, 3)
    x = 0.0
    for column, width in zip(columns, widths):
        for line, c in enumerate(column):
            y = 2 + line * _LINE
            swatch = [int(x), y + 1, int(x) + _LINE - 4, y + _LINE - 3]
            draw.rectangle(swatch, fill=tuple(int(v) for v in palette[c]), outline=(96, 96, 96))
            draw.text((x + _LINE, y), names[c], fill=(0, 0, 0), font=font)
        x += width
    return np.asarray(canvas)


def _titles(columns: int, cell: int, titles: Sequence[str], width: int) -> np.ndarray:
    """(_TITLE, width, 3) white bar with each column's title centred over its cell."""
    bar = Image.new("RGB", (width, _TITLE), (255, 255, 255))
    draw = ImageDraw.Draw(bar)
    font = _font(12)
    for k in range(columns):
        centre = k * (cell + _GAP) + cell / 2
        draw.text((centre, _TITLE / 2), titles[k], fill=(0, 0, 0), font=font, anchor="mm")
    return np.asarray(bar)


def write_overview(
    voc: VOCDataset,
    ids: Sequence[str],
    cam_dir: str | os.PathLike,
    rw_dir: str | os.PathLike,
    out: str | os.PathLike,
    height: int = 128,
    seg_dir: str | os.PathLike | None = None,
) -> Path:
    """overview.png: column titles, then one row per image: image | ground truth | CAM |
    random walk, and the segmentation network's prediction from SEG_DIR/<id>.png when
    seg_dir is given; right of each row, a legend of the classes its panels show (the
    ground truth's, the CAMs' and the predictions'), each with its colour ("void" for the
    ground truth's 255)."""
    names = (*voc.class_names, *("?",) * (256 - len(voc.class_names)))
    names = names[:255] + ("void",)
    rows, legends = [], []
    for image_id in ids:
        # every panel made at its size in the picture: a huge image costs no more than that
        with Image.open(voc.image_path(image_id)) as im:
            w, h = im.size
        size = (max(1, int(round(w * height / h))), height)
        rgb = np.asarray(load_working_image(voc, image_id, max(size))[0].resize(size))
        gt = voc.load_mask(image_id) if voc.mask_path(image_id) else np.zeros((h, w), np.uint8)
        cam = load_score_dict(Path(cam_dir) / f"{image_id}.npy", "CAM")
        rw = load_label_png(Path(rw_dir) / f"{image_id}.png")
        labels = [gt, rw]
        panels = [rgb, _colour(gt), _cam_picture(rgb, cam, voc.num_classes), _colour(rw)]
        if seg_dir is not None:
            labels.append(load_label_png(Path(seg_dir) / f"{image_id}.png"))
            panels.append(_colour(labels[-1]))
        shown = {int(c) + 1 for c in cam}.union(*(np.unique(a).tolist() for a in labels))
        legends.append(sorted(shown - {0}))
        rows.append([np.asarray(Image.fromarray(p).resize(size, Image.NEAREST)) for p in panels])
    if not rows:
        raise ValueError("no images for the overview")
    # one cell width for every row, so that the columns line up under their titles
    cell = max(p.shape[1] for panels in rows for p in panels)
    lines = []
    for panels, shown in zip(rows, legends):
        cells = []
        for p in panels:
            left = (cell - p.shape[1]) // 2
            cells += [
                np.pad(p, ((0, 0), (left, cell - p.shape[1] - left), (0, 0)), constant_values=255)
            ]
            cells.append(np.full((height, _GAP, 3), 255, np.uint8))
        cells.append(_legend(shown, names, height))
        lines.append(np.concatenate(cells, axis=1))
    width = max(line.shape[1] for line in lines)
    lines = [
        np.pad(line, ((0, _GAP), (0, width - line.shape[1]), (0, 0)), constant_values=255)
        for line in lines
    ]
    titles = _titles(len(rows[0]), cell, TITLES, width)
    picture = Image.fromarray(np.concatenate([titles, *lines], axis=0))
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


__all__ = ["TITLES", "write_overview"]
