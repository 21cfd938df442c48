"""Reader for the PASCAL VOC 2012 folder layout.

    ROOT/JPEGImages/<id>.jpg
    ROOT/SegmentationClass/<id>.png      (or SegmentationClassAug/, palette or grey PNGs)
    ROOT/Annotations/<id>.xml            (object names give the image-level labels)
    ROOT/ImageSets/Segmentation/*.txt    (or any list file of image ids)

Class indices: 0 is background, 1..20 the VOC classes in VOC_CLASSES order, 255 is "void"
(ignored). Image-level labels are (20,) float32 vectors without the background, as psa keeps
them (`cls_labels.npy`: a dict {image_id: (20,) vector}).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import atomic_save

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
CLASS_NAMES: tuple[str, ...] = ("background",) + VOC_CLASSES
NUM_CLASSES = len(VOC_CLASSES)  # 20 foreground classes
IGNORE_INDEX = 255
IMAGE_DIR = "JPEGImages"
ANNOTATION_DIR = "Annotations"
MASK_DIRS = ("SegmentationClass", "SegmentationClassAug")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
LABEL_SOURCES = ("auto", "xml", "npy", "mask")


class DatasetError(ValueError):
    """A dataset problem a user can act on: missing folder, unknown id, unreadable file."""


def voc_palette() -> list[int]:
    """The VOC colour map as a flat list of 768 ints (256 RGB triplets) for PIL's putpalette.

    Colour of index i: its bits 0, 1, 2 go to the top bits of R, G, B, then bits 3, 4, 5 to
    the next bits, and so on; 255 (void) comes out as (224, 224, 192).
    """
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


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
    return ids


def labels_to_vector(class_indices: Iterable[int]) -> np.ndarray:
    """(20,) float32 multi-hot vector from foreground class indices 1..20."""
    vec = np.zeros(NUM_CLASSES, np.float32)
    for c in class_indices:
        if 1 <= int(c) <= NUM_CLASSES:
            vec[int(c) - 1] = 1.0
    return vec


def load_cls_labels(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """psa's cls_labels.npy: a pickled dict {image_id: (20,) label vector}."""
    try:
        data = np.load(path, allow_pickle=True)
        table = data.item() if isinstance(data, np.ndarray) and data.dtype == object else data
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read class labels from {str(path)!r}: {exc}") from exc
    if not isinstance(table, dict):
        raise DatasetError(f"{str(path)!r} must hold a dict {{image_id: (20,) vector}}")
    return {str(k): np.asarray(v, np.float32).reshape(NUM_CLASSES) for k, v in table.items()}


def save_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write an (H, W) uint8 class map as a VOC palette PNG, atomically."""
    image = Image.fromarray(np.asarray(label, np.uint8), mode="P")
    image.putpalette(voc_palette())
    atomic_save(path, lambda f: image.save(f, format="PNG"))


def load_label_png(path: str | os.PathLike) -> np.ndarray:
    """(H, W) uint8 class map from a palette PNG (indices) or a grey PNG (values)."""
    try:
        with Image.open(path) as image:
            if image.mode in ("P", "L"):
                return np.array(image, np.uint8)
            if image.mode in ("I", "I;16"):
                return np.array(image).astype(np.uint8)
            raise DatasetError(
                f"{str(path)!r} is a {image.mode} image; a class map must be a "
                "palette (P) or grey (L) PNG"
            )
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError) as exc:
        raise DatasetError(f"cannot decode class map {str(path)!r}: {exc}") from exc


class VOCDataset:
    """Access to one VOC-layout root: images, ground-truth masks, image-level labels.

    Args:
        root: the folder holding JPEGImages/ etc.
        label_source: where image-level labels come from: "xml" (Annotations/<id>.xml, every
            object name), "npy" (psa's cls_labels.npy, at `cls_labels` or ROOT/cls_labels.npy),
            "mask" (the classes present in the ground-truth mask), or "auto" (npy if the file
            is given or present, else xml if Annotations/ exists, else mask).
        cls_labels: path of a cls_labels.npy file.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        label_source: str = "auto",
        cls_labels: str | os.PathLike | None = None,
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
        self._cls_labels = load_cls_labels(cls_labels) if label_source == "npy" else None
        self.classes: tuple[str, ...] = VOC_CLASSES  # foreground class names, index 1..C

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

    def check_ids(self, ids: Iterable[str]) -> None:
        """Raise DatasetError naming the first ids that have no image."""
        missing = [
            i
            for i in ids
            if not any((self.root / IMAGE_DIR / f"{i}{e}").is_file() for e in IMAGE_EXTENSIONS)
        ]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DatasetError(
                f"unknown image id(s) {missing[:5]}{more}: not in {str(self.root / IMAGE_DIR)!r}"
            )

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
        """(H, W) uint8 ground truth (0 background, 1..20 classes, 255 void)."""
        path = self.mask_path(image_id)
        if path is None:
            raise DatasetError(
                f"no ground-truth mask for {image_id!r} in "
                f"{[str(self.root / d) for d in MASK_DIRS]}"
            )
        return load_label_png(path)

    def has_masks(self, ids: Iterable[str]) -> bool:
        return all(self.mask_path(i) is not None for i in ids)

    def image_labels(self, image_id: str) -> np.ndarray:
        """(20,) float32 multi-hot image-level label, from the configured source."""
        if self.label_source == "npy":
            try:
                return self._cls_labels[image_id].copy()
            except KeyError:
                raise DatasetError(
                    f"image id {image_id!r} is not in the cls_labels.npy table"
                ) from None
        if self.label_source == "xml":
            return labels_from_xml(self.root / ANNOTATION_DIR / f"{image_id}.xml")
        mask = self.load_mask(image_id)
        return labels_to_vector(np.unique(mask))


def labels_from_xml(path: str | os.PathLike) -> np.ndarray:
    """(20,) label vector from a VOC annotation: every <object><name> that is a VOC class."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"annotation {str(path)!r} does not exist")
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise DatasetError(f"cannot parse annotation {str(path)!r}: {exc}") from exc
    index = {name: i + 1 for i, name in enumerate(VOC_CLASSES)}
    names = [(el.text or "").strip() for el in tree.getroot().iter("name")]
    return labels_to_vector(index[n] for n in names if n in index)
