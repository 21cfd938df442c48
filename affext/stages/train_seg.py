"""Stage `train-seg`: the segmentation network on make-rw's pseudo labels (docs/method.md §8).

psa ends with a DeepLab network trained on its random-walk labels refined by the dCRF; this
stage trains `affext.models.SegNet` (the backbone at stride 8, DeepLab v3's ASPP head) on
MAKE_RW_DIR/rw_crf/<id>.png (or rw/), the training list's labels only, with per-pixel
cross-entropy (255 ignored), psa's optimiser groups and poly schedule (affext.stages.training).
OUT/seg_net.pt records the head's settings and the class count, so make-seg builds the same
network.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.datasets import _Epoched
from ..data.transforms import colour_jitter, normalize, random_crop, to_long_side
from ..data.voc import IGNORE_INDEX, VOCDataset, load_label_png
from ..models.backbones.base import load_strict
from ..models.seg import DEEPLAB_RATES, segmentation_loss
from ..models.trained import (
    AFF_NET_FILE,
    CAM_NET_FILE,
    SEG_NET_FILE,
    build_seg_net,
    check_seg_checkpoint,
    read_trained,
)
from ..records import record_config
from .common import resolve_device, seed_everything
from .training import TrainConfig, fit_and_save, loss_step, start_training

PSEUDO_LABELS = ("rw", "rw_crf")


@dataclass
class TrainSegConfig(TrainConfig):
    """DeepLab practice within psa's training loop: SGD, momentum 0.9, weight decay 5e-4,
    poly lr (power 0.9) with psa's 1x / 2x / 10x / 20x groups, batch 8 and crop 448 (psa);
    base lr 0.007 and the ASPP head of DeepLab v3; random scaling by 0.5-1.5 and flips
    (DeepLab v2); 20 epochs (DeepLab v2's 20k iterations of 10 images on VOC's 10,582)."""

    epochs: int = 20
    lr: float = 0.007
    scale_range: tuple[float, float] = (0.5, 1.5)  # random rescaling of the working image
    labels: str = "rw_crf"  # which make-rw labels: "rw_crf" (psa's choice) or "rw"
    channels: int = 256  # ASPP width (DeepLab v3)
    rates: tuple[int, ...] = DEEPLAB_RATES  # ASPP dilations at stride 8 (DeepLab v3)
    dropout: float = 0.5
    # Warm start: a trained affext network (its checkpoint, or its stage's output folder)
    # whose backbone starts this one, e.g. train-aff's AffinityNet, trained on the same
    # images at the same working size. `affext run` also takes "train-cam" / "train-aff":
    # that stage's network of the run (train_seg's stage_root; recorded as the name, so a
    # moved work directory keeps its record). The backbone then trains on with the head at
    # one learning rate, BatchNorm not frozen (it is not an ImageNet backbone). None: `weights`.
    init_from: str | None = None
    classes: str | None = None  # classes file ("voc": VOC's 20); None: the dataset's


def head_settings(cfg: TrainSegConfig, num_classes: int) -> dict:
    """What builds the network: kept in seg_net.pt for make-seg."""
    return {
        "num_classes": num_classes,
        "channels": cfg.channels,
        "rates": list(cfg.rates),
        "dropout": cfg.dropout,
    }


TRAINED_FILES = (AFF_NET_FILE, CAM_NET_FILE, SEG_NET_FILE)


def _stage_folder(source: str | os.PathLike, stage_root: str | os.PathLike) -> Path | None:
    """The folder in the work directory `stage_root` of the training stage whose command
    `source` names ("train-cam", "train-aff"; the registry's), or None."""
    from .registry import STAGES  # the registry lists this stage: imported when called

    for s in STAGES:
        if s.training and s.command == str(source) and s.function is not train_seg:
            return s.output(stage_root)
    return None


def warm_start(
    model: torch.nn.Module, source: str | os.PathLike, stage_root: str | os.PathLike | None = None
) -> Path:
    """Load the backbone of the trained network at `source` (a checkpoint file, or a stage
    folder holding aff_net.pt, cam_net.pt or seg_net.pt) into model.backbone; its path.
    With `stage_root` (a work directory), a training stage's command ("train-cam",
    "train-aff") names its folder there."""
    folder = None if stage_root is None else _stage_folder(source, stage_root)
    path = Path(source) if folder is None else folder
    if path.is_dir():
        found = [path / name for name in TRAINED_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(
                f"init_from folder {str(path)!r} holds none of {list(TRAINED_FILES)}: train "
                "that network first, or pass its checkpoint file"
            )
        path = found[0]
    elif not path.is_file():
        raise FileNotFoundError(
            f"init_from {str(path)!r} is neither a checkpoint nor a stage's output folder"
            " (the stage names 'train-cam' / 'train-aff' are resolved by `affext run` only)"
        )
    backbone = model.backbone
    ckpt = read_trained(path, backbone.name, "init_from")
    state = {
        k.removeprefix("backbone."): v
        for k, v in ckpt["state_dict"].items()
        if k.startswith("backbone.")
    }
    load_strict(backbone, state, what=f"the backbone of {str(path)!r}", target=backbone.name)
    return path


def pseudo_label_dir(rw_dir: str | os.PathLike, labels: str) -> Path:
    """MAKE_RW_DIR/<labels>: the folder of the pseudo labels to train on."""
    if labels not in PSEUDO_LABELS:
        raise ValueError(f"labels must be one of {PSEUDO_LABELS}, got {labels!r}")
    return Path(rw_dir) / labels


def require_pseudo_labels(label_dir: Path, ids: Sequence[str]) -> None:
    """Raise FileNotFoundError naming the first missing pseudo-label file."""
    missing = [i for i in ids if not (label_dir / f"{i}.png").is_file()]
    if missing:
        more = f" ({len(missing)} images lack theirs)" if len(missing) > 1 else ""
        raise FileNotFoundError(
            f"missing pseudo label {str(label_dir / f'{missing[0]}.png')!r} for image "
            f"{missing[0]!r}{more}: run make-rw on the training list first"
        )


class SegTrainDataset(_Epoched):
    """Segmentation training: image and pseudo label brought to the working size, rescaled
    together by a random factor (bicubic / nearest), flipped, the image colour-jittered and
    normalised, then a joint random crop (padding: image 0, label 255).
    Items: (image (3, S, S) float32, labels (S, S) uint8)."""

    def __init__(
        self,
        voc: VOCDataset,
        ids: Sequence[str],
        label_dir: str | os.PathLike,
        num_classes: int,
        crop_size: int,
        scale_range: tuple[float, float],
        jitter: tuple[float, ...],
        seed: int = 0,
        long_side: int | None = None,
    ):
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be 0 < low <= high, got {scale_range}")
        self.voc, self.ids, self.label_dir = voc, list(ids), Path(label_dir)
        self.num_classes, self.crop_size, self.scale_range = num_classes, crop_size, scale_range
        self.jitter, self.seed, self.long_side = jitter, seed, long_side

    def __len__(self) -> int:
        return len(self.ids)

    def _label(self, image_id: str, size: tuple[int, int]) -> Image.Image:
        path = self.label_dir / f"{image_id}.png"
        if not path.is_file():
            raise FileNotFoundError(f"missing pseudo label {str(path)!r} for image {image_id!r}")
        label = load_label_png(path)
        if label.shape != size[::-1]:
            raise ValueError(
                f"pseudo label {str(path)!r} is {label.shape} but its image is "
                f"{size[::-1]}: the labels come from another dataset"
            )
        valid = label[label != IGNORE_INDEX]
        if valid.size and int(valid.max()) > self.num_classes:
            raise ValueError(
                f"pseudo label {str(path)!r} holds class {int(valid.max())}, but the dataset "
                f"has {self.num_classes} classes: the labels come from another dataset"
            )
        return Image.fromarray(label, mode="L")

    def __getitem__(self, index: int):
        rng = self._rng(index)
        image_id = self.ids[index]
        image = self.voc.load_pil(image_id)
        label = self._label(image_id, image.size)
        image = to_long_side(image, self.long_side)
        scale = rng.uniform(*self.scale_range)
        size = tuple(max(1, int(round(n * scale))) for n in image.size)
        image = image.resize(size, Image.BICUBIC)
        label = label.resize(size, Image.NEAREST)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            label = label.transpose(Image.FLIP_LEFT_RIGHT)
        x = normalize(np.asarray(colour_jitter(image, rng, *self.jitter)))
        x, y = random_crop(
            [x, np.asarray(label)[None]], self.crop_size, rng, fills=[0.0, IGNORE_INDEX]
        )
        return torch.from_numpy(x), torch.from_numpy(y[0])


def train_seg(
    voc_root: str | os.PathLike,
    ids: Sequence[str],
    rw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: TrainSegConfig | None = None,
    progress: bool = True,
    stage_root: str | os.PathLike | None = None,
) -> Path:
    """Train the segmentation network on `ids` with RW_DIR/<config.labels>/<id>.png (make-rw's
    output folder); writes OUT_DIR/seg_net.pt and returns its path. Resumes per epoch; a
    no-op once finished. The class count is the dataset's (VOCDataset.num_classes).
    stage_root: the work directory in which config.init_from's stage names ("train-cam",
    "train-aff") name that stage's folder (`affext run` passes its own); None: no names."""
    cfg = config or TrainSegConfig()
    final = start_training(cfg, out_dir, "train-seg", SEG_NET_FILE)
    out_dir = final.parent
    # image-level labels are not used here
    voc = VOCDataset(voc_root, label_source="mask", classes=cfg.classes)
    num_classes = voc.num_classes
    for path in (final, out_dir / "train-seg.checkpoint.pt"):
        if path.is_file():  # another backbone's or class count's: refused, not resumed
            check_seg_checkpoint(read_trained(path, cfg.backbone, "train-seg"), path, num_classes)
    if final.is_file():
        return final
    label_dir = pseudo_label_dir(rw_dir, cfg.labels)
    voc.check_ids(ids)
    require_pseudo_labels(label_dir, ids)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    record_config(out_dir, "train-seg", cfg, {"images": len(ids), "num_classes": num_classes})
    dataset = SegTrainDataset(
        voc,
        ids,
        label_dir,
        num_classes,
        cfg.crop_size,
        cfg.scale_range,
        cfg.jitter,
        seed=cfg.seed,
        long_side=cfg.long_side,
    )
    head = head_settings(cfg, num_classes)
    model = build_seg_net(cfg.backbone, weights=cfg.weights, **head)
    init = None
    if cfg.init_from is not None:
        init = str(warm_start(model, cfg.init_from, stage_root))
    return fit_and_save(
        model,
        dataset,
        loss_step(segmentation_loss),
        final,
        name="train-seg",
        config=cfg,
        device=device,
        progress=progress,
        head=head,
        labels=cfg.labels,
        init_from=init,
    )
