"""Reader for the PASCAL VOC 2012 folder layout.

    ROOT/JPEGImages/<id>.jpg
    ROOT/SegmentationClass/<id>.png      (or SegmentationClassAug/, palette or grey PNGs)
    ROOT/Annotations/<id>.xml            (object names give the image-level labels)
    ROOT/ImageSets/Segmentation/*.txt    (or any list file of image ids)

    ROOT/classes.txt                     (optional: the dataset's classes, see below)

Classes: a dataset's foreground classes are VOC's 20 (VOC_CLASSES) unless it declares others
in ROOT/classes.txt, or a classes file is given (`VOCDataset(classes=...)`, the stages'
`classes` setting, the CLI's --classes). A classes file holds one foreground class name per
line, in index order (the first is class 1); blank lines and lines starting with '#' are
skipped, surrounding spaces dropped (names may hold inner spaces: "traffic light"); a first
name "background" is tolerated and skipped. Names must be unique, at most 254 of them (index
255 is void). The names are matched against the XML <object><name>s; the masks hold the
indices.

Class indices: 0 is background, 1..C the classes in file order, 255 is "void" (ignored).
Image-level labels are (C,) float32 vectors without the background, as psa keeps them
(`cls_labels.npy`: a dict {image_id: (C,) vector}; psa's (20,) for VOC).
"""

from __future__ import annotations

import functools
import io
import os
import struct
import warnings
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import AffextError
from ..files import atomic_save
from ..safe_load import UnsafeFileError, load_npy
from ..workers import map_in_processes

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
CLASSES_FILE = "classes.txt"  # ROOT/classes.txt: the dataset's own classes
MAX_CLASSES = IGNORE_INDEX - 1  # indices 1..C and 255 (void) must fit a uint8 PNG


class DatasetError(AffextError, ValueError):
    """A dataset problem a user can act on: missing folder, unknown id, unreadable file."""


def voc_palette() -> list[int]:
    """The VOC colour map as a flat list of 768 ints (256 RGB triplets) for PIL's putpalette.

    Colour of index i: its bits 0, 1, 2 go to the top bits of R, G, B, then bits 3, 4, 5 to
    the next bits, and so on; 255 (void) comes out as (224, 224, 192).
    """
    return list(_palette())


@functools.cache
def _palette() -> tuple[int, ...]:
    """voc_palette's values, made once (every label PNG written carries them)."""
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
    return tuple(palette)


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


def check_classes(names: Iterable[str], source: str = "the class list") -> tuple[str, ...]:
    """Foreground class names, validated: stripped, a leading "background" dropped, none
    empty or repeated, 1 to 254 of them. Raises DatasetError naming `source`."""
    names = [str(n).strip() for n in names]
    if names and names[0].lower() == "background":
        names = names[1:]
    if not names:
        raise DatasetError(f"{source} names no class: list one foreground class per line")
    empty = [n for n, name in enumerate(names, 1) if not name]
    if empty:
        raise DatasetError(f"{source}: class {empty[0]} has an empty name")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DatasetError(f"{source} names class(es) {repeated} more than once")
    if "background" in (n.lower() for n in names):
        raise DatasetError(
            f"{source}: 'background' is class 0 and may only be the first line, or left out"
        )
    if len(names) > MAX_CLASSES:
        raise DatasetError(
            f"{source} names {len(names)} classes; at most {MAX_CLASSES} fit the label PNGs "
            "(0 is background, 255 void)"
        )
    return tuple(names)


def read_classes(path: str | os.PathLike) -> tuple[str, ...]:
    """The foreground class names of a classes file (format: this module's docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"classes file {str(path)!r} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read classes file {str(path)!r}: {exc}") from exc
    names = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    return check_classes(names, f"classes file {str(path)!r}")


def dataset_classes(
    root: str | os.PathLike, classes: str | os.PathLike | Sequence[str] | None = None
) -> tuple[str, ...]:
    """A dataset's foreground classes: `classes` (a classes file, "voc" for VOC's 20, or the
    names) when given, else ROOT/classes.txt when there is one, else VOC's 20."""
    if classes is None:
        own = Path(root) / CLASSES_FILE
        return read_classes(own) if own.is_file() else VOC_CLASSES
    if isinstance(classes, (str, os.PathLike)):
        return VOC_CLASSES if str(classes).lower() == "voc" else read_classes(classes)
    return check_classes(classes, "the classes given")


def labels_to_vector(
    class_indices: Iterable[int], num_classes: int = NUM_CLASSES, source: str | None = None
) -> np.ndarray:
    """(C,) float32 multi-hot vector from class indices: 1..C set their entry, 0 (background)
    and 255 (void) are skipped, any other index raises DatasetError naming `source`."""
    vec = np.zeros(num_classes, np.float32)
    for c in class_indices:
        c = int(c)
        if 1 <= c <= num_classes:
            vec[c - 1] = 1.0
        elif c not in (0, IGNORE_INDEX):
            raise DatasetError(
                f"{source or 'the labels'} hold(s) class index {c}, outside the dataset's "
                f"classes 1..{num_classes} (0 background, 255 void): "
                "declare the dataset's classes in ROOT/classes.txt or give --classes"
            )
    return vec


def load_cls_labels(
    path: str | os.PathLike, num_classes: int = NUM_CLASSES
) -> dict[str, np.ndarray]:
    """psa's cls_labels.npy: a pickled dict {image_id: (C,) label vector} (C = 20 for VOC).

    Read by safe_load.load_npy (str or int ids, numeric vectors; nothing in the file runs):
    UnsafeFileError for anything else, DatasetError for an unreadable file or no dict."""
    try:
        table = load_npy(path, "class labels")
    except UnsafeFileError:
        raise
    except OSError as exc:
        raise DatasetError(f"cannot read class labels from {str(path)!r}: {exc}") from exc
    except ValueError as exc:  # its message names the file
        raise DatasetError(str(exc)) from exc
    if not isinstance(table, dict):
        raise DatasetError(f"{str(path)!r} must hold a dict {{image_id: ({num_classes},) vector}}")
    out = {}
    for k, v in table.items():
        v = np.asarray(v, np.float32)
        if v.size != num_classes:
            raise DatasetError(
                f"{str(path)!r} holds a {v.shape} label vector for {k!r}, but the dataset "
                f"has {num_classes} classes: the file belongs to another class list"
            )
        out[str(k)] = v.reshape(num_classes)
    return out


def save_cls_labels(path: str | os.PathLike, table: dict[str, np.ndarray]) -> None:
    """Write {image_id: (C,) vector} as psa's cls_labels.npy (a pickled dict), atomically."""
    data = {str(k): np.asarray(v, np.float32) for k, v in table.items()}
    atomic_save(path, lambda f: np.save(f, data, allow_pickle=True))


def save_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write an (H, W) uint8 class map as a VOC palette PNG, atomically."""
    image = Image.fromarray(np.asarray(label, np.uint8), mode="P")
    image.putpalette(voc_palette())
    atomic_save(path, lambda f: image.save(f, format="PNG"))


def load_label_png(path: str | os.PathLike) -> np.ndarray:
    """(H, W) uint8 class map from a palette PNG (indices) or a grey PNG (values)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise DatasetError(f"cannot read class map {str(path)!r}: {exc}") from exc
    plain = _plain_png(data)
    if plain is not None:
        return plain
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode in ("P", "L"):
                return np.array(image, np.uint8)
            if image.mode in ("I", "I;16"):
                return np.array(image).astype(np.uint8)
            raise DatasetError(
                f"{str(path)!r} is a {image.mode} image; a class map must be a "
                "palette (P) or grey (L) PNG"
            )
    except (OSError, SyntaxError) as exc:
        raise DatasetError(f"cannot decode class map {str(path)!r}: {exc}") from exc


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _plain_png(data: bytes) -> np.ndarray | None:
    """The (H, W) uint8 values of an 8-bit palette or grey PNG, not interlaced, with every
    row unfiltered (as PIL writes class maps), read without PIL in a quarter of its time (the
    stages' checks read every mask: docs/method.md §9); None for any other PNG, which PIL
    reads. The deflate stream's own checksum catches a corrupt file."""
    if not data.startswith(_PNG_SIGNATURE):
        return None
    pos, size, idat = 8, None, []
    while pos + 8 <= len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        if kind == b"IHDR" and n >= 13:
            w, h, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, pos + 8)
            if depth != 8 or colour not in (0, 3) or interlace:
                return None
            size = (h, w)
        elif kind == b"IDAT":
            idat.append(data[pos + 8 : pos + 8 + n])
        elif kind == b"IEND":
            break
        pos += 12 + n
    if size is None or not idat:
        return None
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error:
        return None  # PIL names what is wrong
    h, w = size
    if len(raw) != h * (w + 1):
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(h, w + 1)
    if rows[:, 0].any():  # a filtered row
        return None
    return rows[:, 1:].copy()


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


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(W, H) of an image file, read from its header: a JPEG's frame header or a PNG's IHDR
    directly, anything else (or anything unexpected) through PIL; DatasetError naming the
    file when it cannot be read."""
    try:
        size = _header_size(path)
        if size is None:
            with Image.open(path) as im:
                size = im.size
    except (OSError, SyntaxError) as exc:
        raise DatasetError(f"cannot read image {str(path)!r}: {exc}") from exc
    return size


def _image_sizes(paths: Sequence[str]) -> list[tuple[int, int]]:
    """image_size of each file (image_sizes' work)."""
    return [image_size(p) for p in paths]


# JPEG start-of-frame markers (baseline, progressive, ...), which hold the height and width
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(W, H) from a JPEG's start-of-frame segment or a PNG's IHDR, reading only the
    segments before it (PIL's open costs several times more per file); None otherwise."""
    with open(path, "rb") as f:
        head = f.read(26)
        if head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if not head.startswith(b"\xff\xd8"):
            return None
        pos = 2
        for _ in range(64):  # APPn, DQT, DHT, ... segments before the frame
            f.seek(pos)
            marker = f.read(4)
            if len(marker) < 4 or marker[0] != 0xFF:
                return None
            if marker[1] in _SOF:
                frame = f.read(5)
                if len(frame) < 5:
                    return None
                h, w = struct.unpack(">HH", frame[1:5])
                return (w, h) if w and h else None
            pos += 2 + struct.unpack(">H", marker[2:4])[0]
    return None


def _mask_classes_error(path, bad: list[int], num_classes: int) -> DatasetError:
    return DatasetError(
        f"ground truth {str(path)!r} holds class index(es) {bad}, outside the dataset's "
        f"classes 1..{num_classes} (0 background, 255 void): declare the dataset's classes "
        "in ROOT/classes.txt or give --classes"
    )


def labels_from_xml(path: str | os.PathLike, classes: Sequence[str] = VOC_CLASSES) -> np.ndarray:
    """(C,) label vector from a VOC annotation: the <object><name> of every object (the names
    of its parts, such as a person's "head", are not classes). A name that is not one of
    `classes` raises DatasetError naming the file and the name."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"annotation {str(path)!r} does not exist")
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise DatasetError(f"cannot parse annotation {str(path)!r}: {exc}") from exc
    index = {name: i + 1 for i, name in enumerate(classes)}
    names = [(obj.findtext("name") or "").strip() for obj in tree.getroot().iter("object")]
    unknown = sorted({n for n in names if n not in index})
    if unknown:
        which = "VOC's 20" if tuple(classes) == VOC_CLASSES else f"the {len(classes)} declared"
        raise DatasetError(
            f"annotation {str(path)!r} names class(es) {unknown}, not among the dataset's "
            f"classes ({which}): declare the dataset's classes in ROOT/classes.txt or give "
            "--classes"
        )
    return labels_to_vector((index[n] for n in names), len(classes))
