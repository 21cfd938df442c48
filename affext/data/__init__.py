"""Datasets: the VOC 2012 layout reader and the embedded synthetic dataset."""

from .synth import SynthConfig, make_synthetic_voc
from .voc import (
    CLASS_NAMES,
    IGNORE_INDEX,
    VOC_CLASSES,
    DatasetError,
    VOCDataset,
    labels_from_xml,
    load_cls_labels,
    load_label_png,
    read_id_list,
    save_label_png,
    voc_palette,
)

__all__ = [
    "CLASS_NAMES",
    "IGNORE_INDEX",
    "VOC_CLASSES",
    "DatasetError",
    "SynthConfig",
    "VOCDataset",
    "labels_from_xml",
    "load_cls_labels",
    "load_label_png",
    "make_synthetic_voc",
    "read_id_list",
    "save_label_png",
    "voc_palette",
]
