"""Datasets: the VOC 2012 layout reader and the embedded synthetic dataset."""

# ruff: noqa: E402 - the imports below come after the check that names the missing extra
from ..extras import require

require("affext's datasets", ("PIL", "tqdm"))

from .coco import convert_coco
from .synth import SynthConfig, make_synthetic_voc
from .voc import (
    CLASS_NAMES,
    CLASSES_FILE,
    IGNORE_INDEX,
    VOC_CLASSES,
    DatasetError,
    VOCDataset,
    dataset_classes,
    labels_from_xml,
    load_cls_labels,
    load_label_png,
    read_classes,
    read_id_list,
    save_cls_labels,
    save_label_png,
    voc_palette,
)

__all__ = [
    "CLASSES_FILE",
    "CLASS_NAMES",
    "IGNORE_INDEX",
    "VOC_CLASSES",
    "DatasetError",
    "SynthConfig",
    "VOCDataset",
    "convert_coco",
    "dataset_classes",
    "labels_from_xml",
    "load_cls_labels",
    "load_label_png",
    "make_synthetic_voc",
    "read_classes",
    "read_id_list",
    "save_cls_labels",
    "save_label_png",
    "voc_palette",
]
