"""Reader for the PASCAL VOC 2012 folder layout.

    ROOT/JPEGImages/<id>.jpg
    ROOT/SegmentationClass/<id>.png      (or SegmentationClassAug/, palette or grey PNGs)
    ROOT/Annotations/<id>.xml            (object names give the image-level labels)
    ROOT/ImageSets/Segmentation/*.txt    (or any list file of image ids)

    ROOT/classes.txt                     (optional: the dataset's classes, classes.py)

Classes, class indices and image-level labels: classes.py; the PNG and header readers:
image_files.py.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..workers import map_in_processes
from .classes import (
    CLASS_NAMES,
    CLASSES_FILE,
    IGNORE_INDEX,
    MAX_CLASSES,
    NUM_CLASSES,
    VOC_CLASSES,
    DatasetError,
    check_classes,
    dataset_classes,
    labels_from_xml,
    labels_to_vector,
    load_cls_labels,
    read_classes,
    save_cls_labels,
)
from .image_files import image_size, load_label_png, save_label_png, voc_palette

# also the names that classes.py and image_files.py hold, importable from here as before
__all__ = [
    "ANNOTATION_DIR",
    "CLASSES_FILE",
    "CLASS_NAMES",
    "IGNORE_INDEX",
    "IMAGE_DIR",
    "IMAGE_EXTENSIONS",
    "LABEL_SOURCES",
    "MASK_DIRS",
    "MAX_CLASSES",
    "NUM_CLASSES",
    "VOC_CLASSES",
    "DatasetError",
    "VOCDataset",
    "check_classes",
    "dataset_classes",
    "image_size",
    "labels_from_xml",
    "labels_to_vector",
    "load_cls_labels",
    "load_label_png",
    "read_classes",
    "read_id_list",
    "save_cls_labels",
    "save_label_png",
    "unique_ids",
    "voc_palette",
]

IMAGE_DIR = "JPEGImages"
ANNOTATION_DIR = "Annotations"
MASK_DIRS = ("SegmentationClass", "SegmentationClassAug")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
LABEL_SOURCES = ("auto", "xml", "npy", "mask")


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Image ids from a list file, one per line.

    Accepts plain ids ("2007_000032"), and psa/DeepLab style lines
    ("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png"): the first field's
    file name without its extension. Blank lines and lines starting with '#' are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"list file {str(path)!r} does not exist")
    ids = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        first = line.split()[0]
        name = os.path.basename(first)
        stem, ext = os.path.splitext(name)
        ids.append(stem if ext.lower() in IMAGE_EXTENSIONS + (".png",) else name)
    if not ids:
        raise DatasetError(f"list file {str(path)!r} holds no image ids")
    return unique_ids(ids, f"list file {str(path)!r}")


def unique_ids(ids: Iterable[str], source: str = "the id list") -> list[str]:
    """ids without repeats, in first-seen order; warns naming `source` and the repeated ids
    (a repeated id would be trained twice and counted twice in the mIoU)."""
    ids = list(ids)
    unique = list(dict.fromkeys(ids))
    if len(unique) != len(ids):
        seen: set[str] = set()
        repeated = list(dict.fromkeys(i for i in ids if i in seen or seen.add(i)))
        more = f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
        warnings.warn(
            f"{source} names {len(ids) - len(unique)} id(s) more than once "
            f"({repeated[:5]}{more}); each is used once",
            stacklevel=2,
        )
    return unique


class VOCDataset:
    """Access to one VOC-layout root: images, ground-truth masks, image-level labels.

    Args:
        root: the folder holding JPEGImages/ etc.
        label_source: where image-level labels come from: "xml" (Annotations/<id>.xml, every
            object name), "npy" (psa's cls_labels.npy, at `cls_labels` or ROOT/cls_labels.npy),
            "mask" (the classes present in the ground-truth mask), or "auto" (npy if the file
            is given or present, else xml if Annotations/ exists, else mask).
        cls_labels: path of a cls_labels.npy file.
        classes: the foreground classes: a classes file, "voc" (VOC's 20) or the names;
            None: ROOT/classes.txt when there is one, else VOC's 20 (`dataset_classes`).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        label_source: str = "auto",
        cls_labels: str | os.PathLike | None = None,
        classes: str | os.PathLike | Sequence[str] | None = None,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(
                f"dataset root {str(self.root)!r} does not exist or is not a "
                "folder (expected the VOC layout: JPEGImages/, "
                "SegmentationClass/, Annotations/)"
            )
        if not (self.root / IMAGE_DIR).is_dir():
            raise DatasetError(
                f"dataset root {str(self.root)!r} has no {IMAGE_DIR}/ folder; "
                "point it at the folder that holds JPEGImages/ (for VOC: "
                "VOCdevkit/VOC2012)"
            )
        if label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source must be one of {LABEL_SOURCES}, got {label_source!r}")
        if cls_labels is None and (self.root / "cls_labels.npy").is_file():
            cls_labels = self.root / "cls_labels.npy"
        if label_source == "auto":
            if cls_labels is not None:
                label_source = "npy"
            elif (self.root / ANNOTATION_DIR).is_dir():
                label_source = "xml"
            else:
                label_source = "mask"
        if label_source == "npy" and cls_labels is None:
            raise DatasetError(
                "label_source 'npy' needs a cls_labels.npy file (none given and "
                f"none at {str(self.root / 'cls_labels.npy')!r})"
            )
        self.label_source = label_source
        # foreground class names, index 1..C
        self.classes: tuple[str, ...] = dataset_classes(self.root, classes)
        self._cls_labels = (
            load_cls_labels(cls_labels, self.num_classes) if label_source == "npy" else None
        )

    @property
    def num_classes(self) -> int:
        """C, the number of foreground classes (label vectors have C entries)."""
        return len(self.classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        """("background",) + classes: the names of label indices 0..C."""
        return ("background",) + self.classes

    # -- paths ----------------------------------------------------------------------------
    def image_path(self, image_id: str) -> Path:
        """Path of an image; raises DatasetError for an id with no image."""
        for ext in IMAGE_EXTENSIONS:
            path = self.root / IMAGE_DIR / f"{image_id}{ext}"
            if path.is_file():
                return path
        raise DatasetError(
            f"unknown image id {image_id!r}: no {image_id}.jpg in {str(self.root / IMAGE_DIR)!r}"
        )

    def mask_path(self, image_id: str) -> Path | None:
        """Path of the ground-truth mask, or None when the dataset has none for this id."""
        for folder in MASK_DIRS:
            path = self.root / folder / f"{image_id}.png"
            if path.is_file():
                return path
        return None

    def _names(self, folder: str) -> set[str]:
        """The entries of ROOT/folder (none when it is missing): one directory read serves a
        whole list's checks, where a test per id costs a file-system call each (at COCO's
        82,081 ids, seconds; docs/method.md §9)."""
        try:
            return set(os.listdir(self.root / folder))
        except (FileNotFoundError, NotADirectoryError):
            return set()

    def check_ids(self, ids: Iterable[str]) -> None:
        """Raise DatasetError naming the first ids that have no image (an entry of the image
        folder; a file that cannot be read is named when it is read)."""
        names = self._names(IMAGE_DIR)
        missing = [i for i in ids if not any(f"{i}{e}" in names for e in IMAGE_EXTENSIONS)]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DatasetError(
                f"unknown image id(s) {missing[:5]}{more}: not in {str(self.root / IMAGE_DIR)!r}"
            )

    def image_paths(self, ids: Iterable[str]) -> list[str]:
        """image_path of every id as a string, from one read of the image folder."""
        names = self._names(IMAGE_DIR)
        folder = str(self.root / IMAGE_DIR)
        out = []
        for i in ids:
            ext = next((e for e in IMAGE_EXTENSIONS if f"{i}{e}" in names), None)
            out.append(str(self.image_path(i)) if ext is None else f"{folder}/{i}{ext}")
        return out

    def image_sizes(
        self, ids: Iterable[str], processes: int | None = None
    ) -> list[tuple[int, int]]:
        """(W, H) of every id's image, from the file headers (in processes for a long list;
        processes: None, every core)."""
        return map_in_processes(_image_sizes, self.image_paths(ids), processes=processes)

    # -- content --------------------------------------------------------------------------
    def load_image(self, image_id: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB image."""
        return np.asarray(self.load_pil(image_id))

    def load_pil(self, image_id: str) -> Image.Image:
        """The image as an RGB PIL image, fully decoded (a corrupt file fails here)."""
        path = self.image_path(image_id)
        try:
            with Image.open(path) as image:
                image.load()
                return image.convert("RGB")
        except (OSError, SyntaxError, ValueError) as exc:
            raise DatasetError(
                f"cannot decode image {str(path)!r} (id {image_id!r}): {exc}"
            ) from exc

    def load_mask(self, image_id: str) -> np.ndarray:
        """(H, W) uint8 ground truth (0 background, 1..C classes, 255 void)."""
        path = self.mask_path(image_id)
        if path is None:
            raise DatasetError(
                f"no ground-truth mask for {image_id!r} in "
                f"{[str(self.root / d) for d in MASK_DIRS]}"
            )
        return load_label_png(path)

    def _mask_files(self, ids: Iterable[str]) -> list[str | None]:
        """Each id's mask file as a string (None: no mask), from one read of each mask
        folder (strings: a Path per id costs as much as the file test it replaces)."""
        folders = [(folder, self._names(folder)) for folder in MASK_DIRS]
        root = str(self.root)
        out: list[str | None] = []
        for i in ids:
            name = f"{i}.png"
            folder = next((f for f, names in folders if name in names), None)
            out.append(None if folder is None else os.path.join(root, folder, name))
        return out

    def mask_paths(self, ids: Iterable[str]) -> list[Path | None]:
        """mask_path of every id, from one read of each mask folder."""
        return [None if p is None else Path(p) for p in self._mask_files(ids)]

    def has_masks(self, ids: Iterable[str]) -> bool:
        return all(p is not None for p in self._mask_files(ids))

    def check_mask(self, image_id: str, mask: np.ndarray | None = None) -> np.ndarray:
        """The ground truth of image_id (or `mask`, read from it), once every value in it is
        background, one of the dataset's classes or void; else DatasetError naming the file."""
        if mask is None:
            mask = self.load_mask(image_id)
        bad = _outside_classes(mask, self.num_classes)
        if bad:
            raise _mask_classes_error(self.mask_path(image_id), bad, self.num_classes)
        return mask

    def check_masks(self, ids: Iterable[str], processes: int | None = None) -> None:
        """check_mask for every id, each mask read once: in processes for a long list (a
        mask's classes are known only once it is decoded; processes: None, every core)."""
        ids = list(ids)
        paths = self._mask_files(ids)
        missing = [i for i, p in zip(ids, paths) if p is None]
        if missing:
            self.load_mask(missing[0])  # raises, naming the folders
        jobs = [(p, self.num_classes) for p in paths]
        for path, bad in map_in_processes(_masks_outside_classes, jobs, processes=processes):
            raise _mask_classes_error(path, bad, self.num_classes)

    def image_labels(self, image_id: str) -> np.ndarray:
        """(C,) float32 multi-hot image-level label, from the configured source."""
        if self.label_source == "npy":
            try:
                return self._cls_labels[image_id].copy()
            except KeyError:
                raise DatasetError(
                    f"image id {image_id!r} is not in the cls_labels.npy table"
                ) from None
        if self.label_source == "xml":
            return labels_from_xml(self.root / ANNOTATION_DIR / f"{image_id}.xml", self.classes)
        mask = self.load_mask(image_id)
        return labels_to_vector(
            np.unique(mask), self.num_classes, f"ground truth {str(self.mask_path(image_id))!r}"
        )


def _outside_classes(mask: np.ndarray, num_classes: int) -> list[int]:
    """The values of a class map that are neither background, a class 1..num_classes nor
    void (a count of the 256 values: linear in the pixels, unlike a sort)."""
    counts = np.bincount(np.asarray(mask, np.uint8).ravel(), minlength=256)
    counts[: num_classes + 1] = 0
    counts[IGNORE_INDEX] = 0
    return np.flatnonzero(counts).tolist()


def _masks_outside_classes(jobs: Sequence[tuple[str, int]]) -> list[tuple[str, list[int]]]:
    """[(path, values outside the classes)] of the masks that have any (check_masks' work)."""
    out = []
    for path, num_classes in jobs:
        bad = _outside_classes(load_label_png(path), num_classes)
        if bad:
            out.append((path, bad))
    return out


def _image_sizes(paths: Sequence[str]) -> list[tuple[int, int]]:
    """image_size of each file (image_sizes' work)."""
    return [image_size(p) for p in paths]


def _mask_classes_error(path, bad: list[int], num_classes: int) -> DatasetError:
    return DatasetError(
        f"ground truth {str(path)!r} holds class index(es) {bad}, outside the dataset's "
        f"classes 1..{num_classes} (0 background, 255 void): declare the dataset's classes "
        "in ROOT/classes.txt or give --classes"
    )
