"""`affext data coco`: MS-COCO's own files (instances_*.json and an image folder) in the VOC
layout that every stage reads (voc.py):

    ROOT/classes.txt                     COCO's 80 category names in category-id order
    ROOT/JPEGImages/<name>.jpg           links to COCO's images (copies with copy=True)
    ROOT/SegmentationClass/<name>.png    class index per pixel (VOC palette), see below
    ROOT/cls_labels.npy                  psa's {image id: (80,) vector}, every split's
    ROOT/ImageSets/Segmentation/SPLIT.txt            the images with at least one label
    ROOT/ImageSets/Segmentation/SPLIT_unlabeled.txt  the images without any annotation

An image's id is its file name without the extension (COCO_train2014_000000000009). COCO's
category ids run from 1 to 90 with gaps; sorted, they become the class indices 1..80.

The masks (docs/method.md §9): 0 background; c where only annotations of class c cover the
pixel; 255 (void, left out of the scores and of the training losses) where a crowd region
(iscrowd 1) covers it, or where annotations of two or more classes overlap (which of them
the pixel shows is not known). The image-level labels are the classes of all the image's
annotations, crowd regions included: the class is in the image even where its pixels are
void. Images without any annotation are written too (their mask all background, their
vector zero) but listed apart, in SPLIT_unlabeled.txt: the weakly supervised works train
and score on the images with at least one label (82,081 of train2014's 82,783 images,
40,137 of val2014's 40,504), since an image of no class gives the classifier no positive
evidence and the random walk no seed.

Polygons and run-length encodings (compressed or not) are decoded by pycocotools (the
`coco` extra), in processes; the conversion resumes (an image whose mask exists at its size
is skipped), writes every file atomically, and gives the same files when run twice.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..extras import require
from ..files import atomic_save
from ..records import record_config
from ..workers import default_processes, pool_process_init, process_context
from .coco_masks import annotation_mask, class_map
from .voc import (
    CLASSES_FILE,
    IMAGE_DIR,
    IMAGE_EXTENSIONS,
    DatasetError,
    check_classes,
    image_size,
    load_cls_labels,
    read_classes,
    save_cls_labels,
    save_label_png,
)

MASK_DIR = "SegmentationClass"
LIST_DIR = Path("ImageSets") / "Segmentation"
UNLABELED_SUFFIX = "_unlabeled"
CLS_LABELS_FILE = "cls_labels.npy"


@dataclass
class CocoConfig:
    """What a conversion was made from (recorded as ROOT/coco-SPLIT.config.json)."""

    annotations: str
    images: str
    split: str = "train"
    copy: bool = False  # copy the images instead of linking them


@dataclass
class _Image:
    """One image's job: its id, source file, size, annotations [(class, crowd, segm)] and
    their ids, and the annotation file (for the errors)."""

    image_id: str
    source: str
    file_name: str
    height: int
    width: int
    annotations: list[tuple[int, bool, object]]
    annotation_ids: list[object]
    annotation_file: str


# ------------------------------------------------------------------ the annotation file
def read_annotations(path: str | os.PathLike) -> dict:
    """A COCO instances file as a dict, with its images, annotations and categories lists;
    DatasetError naming the file when it is missing, not JSON or not of that shape."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"COCO annotation file {str(path)!r} does not exist")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(
            f"cannot read COCO annotation file {str(path)!r}: {exc} (a truncated or corrupt "
            "download? unpack annotations_trainval2014.zip again)"
        ) from exc
    if not isinstance(data, dict):
        raise DatasetError(f"COCO annotation file {str(path)!r} does not hold a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(
                f"COCO annotation file {str(path)!r} has no {key!r} list: an instances_*.json "
                "file is needed (captions and keypoints files hold no masks)"
            )
    return data


def coco_classes(categories: Sequence[dict], source: str) -> tuple[tuple[str, ...], dict]:
    """(class names in category-id order, {category id: class index 1..C}) of COCO's
    categories; DatasetError naming `source` for a repeated or malformed category."""
    try:
        ordered = sorted((int(c["id"]), str(c["name"])) for c in categories)
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(
            f"{source}: a category without an integer id and a name ({exc})"
        ) from exc
    ids = [i for i, _ in ordered]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{source} lists category id(s) more than once")
    names = check_classes([n for _, n in ordered], source)
    return names, {cat: n + 1 for n, cat in enumerate(ids)}


def _plan(data: dict, images_dir: Path, source: str, index: dict) -> list[_Image]:
    """Every image of the file, with its annotations, in the file's order; DatasetError
    naming `source` for an annotation of an unknown image or category."""
    jobs: dict[int, _Image] = {}
    stems: dict[str, str] = {}
    for entry in data["images"]:
        try:
            key, name = int(entry["id"]), str(entry["file_name"])
            h, w = int(entry["height"]), int(entry["width"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(
                f"{source}: an image without id, file_name, height, width ({exc})"
            ) from exc
        stem, ext = os.path.splitext(os.path.basename(name))
        if ext.lower() not in IMAGE_EXTENSIONS:
            raise DatasetError(f"{source}: image {name!r} is not one of {IMAGE_EXTENSIONS}")
        if stem in stems or key in jobs:
            raise DatasetError(f"{source} lists image {name!r} (id {key}) more than once")
        stems[stem] = name
        base = os.path.basename(name)
        jobs[key] = _Image(stem, str(images_dir / name), base, h, w, [], [], source)
    for ann in data["annotations"]:
        image = jobs.get(ann.get("image_id"))
        if image is None:
            raise DatasetError(
                f"{source}: annotation {ann.get('id')} is of image id {ann.get('image_id')}, "
                "which the file's images list does not hold"
            )
        cls = index.get(ann.get("category_id"))
        if cls is None:
            raise DatasetError(
                f"{source}: annotation {ann.get('id')} of image {image.file_name!r} has "
                f"category_id {ann.get('category_id')}, not among the file's {len(index)} "
                f"categories (ids {min(index)}..{max(index)})"
            )
        if "segmentation" not in ann:
            raise DatasetError(
                f"{source}: annotation {ann.get('id')} of image {image.file_name!r} has no "
                "segmentation"
            )
        image.annotations.append((cls, bool(ann.get("iscrowd", 0)), ann["segmentation"]))
        image.annotation_ids.append(ann.get("id"))
    return list(jobs.values())


def _mask_done(path: Path, width: int, height: int) -> bool:
    """Whether the mask at `path` exists at the image's size (read from its header: written
    atomically, a mask that exists is complete)."""
    try:
        return path.is_file() and image_size(path) == (width, height)
    except DatasetError:
        return False


def _convert_one(job: tuple[_Image, str, bool]) -> str:
    """One image: check its file's size, place it (link or copy), write its mask."""
    image, root, copy = job
    root_path = Path(root)
    size = image_size(image.source)
    if size != (image.width, image.height):
        raise DatasetError(
            f"image {image.source!r} is {size[0]}x{size[1]} but the annotation file says "
            f"{image.width}x{image.height}: it is another image (another COCO release?)"
        )
    _place_image(Path(image.source), root_path / IMAGE_DIR / image.file_name, copy)
    where = f"{image.annotation_file}: image {image.file_name!r}"
    label = class_map(image.annotations, image.height, image.width, where, image.annotation_ids)
    save_label_png(root_path / MASK_DIR / f"{image.image_id}.png", label)
    return image.image_id


def _place_image(source: Path, target: Path, copy: bool) -> None:
    """A link to `source` at `target` (or a copy), replaced atomically unless already so."""
    if copy:
        same = target.is_file() and target.stat().st_size == source.stat().st_size
        if same and not target.is_symlink():
            return
        with open(source, "rb") as src:
            atomic_save(target, lambda f: shutil.copyfileobj(src, f))
        return
    link = os.path.abspath(source)
    if target.is_symlink() and os.readlink(target) == link:
        return
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(link, tmp)
    os.replace(tmp, target)


def _placed(target: Path, copy: bool) -> bool:
    """Whether the image is at `target` as asked: a link to an existing file, or a copy."""
    return target.exists() and not (copy and target.is_symlink())


# ------------------------------------------------------------------ the conversion
def convert_coco(
    annotations: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    split: str = "train",
    copy: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Write COCO's `split` (an instances file and its image folder) to OUT in the VOC
    layout (this module's docstring); returns {"images", "labeled", "unlabeled", "converted"
    (masks written by this call), "classes"}. workers: processes decoding the masks (0: in
    this process; None: every core). Errors are DatasetErrors naming the file."""
    require("affext data coco", ("pycocotools",))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", split):
        raise ValueError(f"split {split!r} must be a plain name such as train or val")
    annotations, images, root = Path(annotations), Path(images), Path(out)
    if not images.is_dir():
        raise DatasetError(f"COCO image folder {str(images)!r} does not exist")
    source = f"COCO annotation file {str(annotations)!r}"
    data = read_annotations(annotations)
    names, index = coco_classes(data["categories"], source)
    jobs = _plan(data, images, source, index)
    missing = [j.source for j in jobs if not os.path.isfile(j.source)]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DatasetError(
            f"{len(missing)} image(s) that {source} lists are not in {str(images)!r}, e.g. "
            f"{missing[:3]}{more}: give the folder of this split's images (e.g. train2014/)"
        )
    for sub in (IMAGE_DIR, MASK_DIR, LIST_DIR):
        (root / sub).mkdir(parents=True, exist_ok=True)
    _write_classes(root, names)
    todo = [
        j
        for j in jobs
        if not (
            _mask_done(root / MASK_DIR / f"{j.image_id}.png", j.width, j.height)
            and _placed(root / IMAGE_DIR / j.file_name, copy)
        )
    ]
    workers = default_processes() if workers is None else workers
    bar = tqdm(
        total=len(jobs),
        initial=len(jobs) - len(todo),
        desc=f"data coco {split}",
        disable=not progress,
    )
    items = [(j, str(root), copy) for j in todo]
    if workers > 0 and len(items) > 1:
        gc.freeze()  # the parsed file stays shared with the forked processes (no refcount copy)
        try:
            with process_context().Pool(min(workers, len(items)), pool_process_init) as pool:
                for _ in pool.imap_unordered(_convert_one, items, chunksize=8):
                    bar.update()
        finally:
            gc.unfreeze()
    else:
        for item in items:
            _convert_one(item)
            bar.update()
    bar.close()
    labeled = [j.image_id for j in jobs if j.annotations]
    unlabeled = [j.image_id for j in jobs if not j.annotations]
    _write_labels(root, jobs, len(names))
    for name, ids in ((split, labeled), (split + UNLABELED_SUFFIX, unlabeled)):
        text = "".join(f"{i}\n" for i in ids).encode()
        atomic_save(root / LIST_DIR / f"{name}.txt", lambda f, text=text: f.write(text))
    summary = {
        "images": len(jobs),
        "labeled": len(labeled),
        "unlabeled": len(unlabeled),
        "converted": len(todo),
        "classes": len(names),
    }
    cfg = CocoConfig(str(annotations), str(images), split, copy)
    record_config(
        root, f"coco-{split}", cfg, {k: v for k, v in summary.items() if k != "converted"}
    )
    return summary


def _write_classes(root: Path, names: tuple[str, ...]) -> None:
    """ROOT/classes.txt, unless it is there with the same names; another dataset's
    classes there are refused (the masks would mix two class lists)."""
    path = root / CLASSES_FILE
    if path.is_file():
        held = read_classes(path)
        if held != names:
            raise DatasetError(
                f"{str(path)!r} lists {len(held)} other classes than the annotation file's "
                f"{len(names)}: {str(root)!r} holds another dataset; convert into a new folder"
            )
        return
    text = "".join(f"{n}\n" for n in names).encode()
    atomic_save(path, lambda f: f.write(text))


def _write_labels(root: Path, jobs: Sequence[_Image], num_classes: int) -> None:
    """ROOT/cls_labels.npy: this split's (C,) vectors merged into the table of the splits
    already there, keys sorted (the same bytes whatever order the splits came in)."""
    path = root / CLS_LABELS_FILE
    table = load_cls_labels(path, num_classes) if path.is_file() else {}
    for job in jobs:
        vec = np.zeros(num_classes, np.float32)
        for cls, _, _ in job.annotations:
            vec[cls - 1] = 1.0
        table[job.image_id] = vec
    save_cls_labels(path, {k: table[k] for k in sorted(table)})


__all__ = [
    "CocoConfig",
    "annotation_mask",
    "class_map",
    "coco_classes",
    "convert_coco",
    "read_annotations",
]
