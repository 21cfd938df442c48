"""A dataset's classes and image-level labels: VOC's 20, a classes file, psa's
cls_labels.npy, VOC's XML annotations.

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

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..errors import AffextError
from ..files import atomic_save
from ..safe_load import UnsafeFileError, load_npy

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
CLASSES_FILE = "classes.txt"  # ROOT/classes.txt: the dataset's own classes
MAX_CLASSES = IGNORE_INDEX - 1  # indices 1..C and 255 (void) must fit a uint8 PNG


class DatasetError(AffextError, ValueError):
    """A dataset problem a user can act on: missing folder, unknown id, unreadable file."""


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
