"""The pipeline's three networks: building them for training, and loading trained ones.

train-cam, train-aff and train-seg build their network here (`build_cam_net`,
`build_aff_net`, `build_seg_net`) and write it to their output folder (CAM_NET_FILE,
AFF_NET_FILE, SEG_NET_FILE); make-cam, make-rw, make-seg and the psa scripts load it back with
`load_network` (or its per-network forms `load_cam_net`, `load_aff_net`, `load_seg_net`), which
takes a stage's output folder or a weights file and refuses, with the remedy, another
backbone's, another network's or another class count's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data.voc import NUM_CLASSES
from .affinity_net import AffinityNet
from .backbones import build_backbone
from .base import Network
from .cam import CAMNet
from .checkpoint import check_backbone, load_checkpoint, read_checkpoint
from .seg import DEEPLAB_RATES, SegNet, head_num_classes

CAM_NET_FILE = "cam_net.pt"
AFF_NET_FILE = "aff_net.pt"
SEG_NET_FILE = "seg_net.pt"
# Network.kind -> (the file in its stage's output folder, the stage that trains it)
TRAINED = {
    "cam": (CAM_NET_FILE, "train-cam"),
    "aff": (AFF_NET_FILE, "train-aff"),
    "seg": (SEG_NET_FILE, "train-seg"),
}


def build_cam_net(
    backbone: str, weights: str | None = None, dropout: float = 0.5, num_classes: int = NUM_CLASSES
) -> CAMNet:
    """train-cam's classifier on a new `backbone` (with its pretrained `weights`, if any)."""
    return CAMNet(build_backbone(backbone, weights), num_classes=num_classes, dropout=dropout)


def build_aff_net(backbone: str, weights: str | None = None) -> AffinityNet:
    """train-aff's AffinityNet on a new `backbone` (with its pretrained `weights`, if any)."""
    return AffinityNet(build_backbone(backbone, weights))


def build_seg_net(
    backbone: str,
    num_classes: int,
    weights: str | None = None,
    channels: int = 256,
    rates: Sequence[int] = DEEPLAB_RATES,
    dropout: float = 0.5,
) -> SegNet:
    """train-seg's segmentation network on a new `backbone`; the head's settings are those
    seg_net.pt records ("head" in its meta)."""
    return SegNet(build_backbone(backbone, weights), num_classes, channels, rates, dropout)


def read_trained(
    path: str | os.PathLike, backbone: str, what: str, num_classes: int | None = None
) -> dict:
    """The checkpoint at `path` (read_checkpoint's dict), refusing another backbone's, or a
    CAM network of another class count than `num_classes` (when given), with the
    command-line remedy."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} checkpoint at {str(path)!r}: train it first")
    ckpt = read_checkpoint(path)
    check_backbone(
        ckpt["backbone"],
        backbone,
        f"{what} checkpoint {str(path)!r}",
        "pass --backbone {} or retrain in a fresh work directory",
    )
    found = ckpt.get("num_classes")
    if num_classes is not None and found is not None and found != num_classes:
        raise ValueError(
            f"{what} checkpoint {str(path)!r} was trained for {found} classes, but the "
            f"dataset has {num_classes}: it belongs to another dataset (or --classes); "
            "retrain in a fresh work directory"
        )
    return ckpt


def check_seg_checkpoint(ckpt: dict, path: str | os.PathLike, num_classes: int) -> None:
    """Refuse a checkpoint that is not a segmentation network's, or one trained for another
    class count than the dataset's, with the remedy."""
    if ckpt["network"] not in ("seg", None):
        raise ValueError(
            f"checkpoint {str(path)!r} holds a {ckpt['network']!r} network, not a "
            "segmentation network: pass train-seg's output folder or its seg_net.pt"
        )
    found = head_num_classes(ckpt["state_dict"])
    if found is None:
        raise ValueError(f"checkpoint {str(path)!r} holds no segmentation head (classifier.*)")
    if found != num_classes:
        raise ValueError(
            f"segmentation checkpoint {str(path)!r} was trained for {found} classes, but the "
            f"dataset has {num_classes}: train it on this dataset in a fresh output folder"
        )


def load_network(
    kind: str,
    source: str | os.PathLike,
    backbone: str,
    device: torch.device | str = "cpu",
    num_classes: int = NUM_CLASSES,
) -> Network:
    """The trained network of `kind` ("cam", "aff" or "seg", Network.kind), in eval mode on
    `device`, with the weights of `source`: its stage's output folder (the file TRAINED names)
    or a weights file (an affext checkpoint, or a bare state dict such as psa's res38_cls.pth
    / res38_aff.pth). Refuses another backbone's weights; for "cam", a network of another
    class count than `num_classes`; for "seg", another network's or another class count's
    (the head is built as seg_net.pt records it). num_classes: the dataset's (unused for
    "aff")."""
    if kind not in TRAINED:
        raise ValueError(f"kind must be one of {sorted(TRAINED)}, got {kind!r}")
    file_name, what = TRAINED[kind]
    path = Path(source)
    path = path if path.is_file() else path / file_name
    ckpt = read_trained(path, backbone, what, num_classes if kind == "cam" else None)
    model: Network
    if kind == "cam":
        model = build_cam_net(backbone, num_classes=num_classes)
    elif kind == "aff":
        model = build_aff_net(backbone)
    else:
        check_seg_checkpoint(ckpt, path, num_classes)
        head = dict(ckpt.get("meta", {}).get("head") or {"num_classes": num_classes})
        model = build_seg_net(backbone, **head)
    load_checkpoint(model, ckpt)
    return model.to(device).eval()


def load_cam_net(
    out_dir: str | os.PathLike,
    backbone: str,
    device: torch.device | str = "cpu",
    num_classes: int = NUM_CLASSES,
) -> Network:
    """The trained classifier: train-cam's OUT_DIR (its cam_net.pt) or a weights file such as
    psa's res38_cls.pth (refuses another backbone's, or another class count's)."""
    return load_network("cam", out_dir, backbone, device, num_classes)


def load_aff_net(
    out_dir: str | os.PathLike, backbone: str, device: torch.device | str = "cpu"
) -> Network:
    """The trained AffinityNet: train-aff's OUT_DIR (its aff_net.pt) or a weights file such as
    psa's res38_aff.pth (refuses another backbone's)."""
    return load_network("aff", out_dir, backbone, device)


def load_seg_net(
    source: str | os.PathLike,
    backbone: str,
    num_classes: int,
    device: torch.device | str = "cpu",
) -> Network:
    """The trained segmentation network, in eval mode on `device`: train-seg's output folder
    (its seg_net.pt) or the file itself. Refuses another backbone's, another network's and
    another class count's."""
    return load_network("seg", source, backbone, device, num_classes)
