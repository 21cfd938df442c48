"""Stage `train-cam`: the classification network that gives CAMs (docs/method.md §1)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..data.datasets import ClsTrainDataset
from ..data.voc import VOCDataset
from ..models.trained import CAM_NET_FILE, build_cam_net, read_trained
from ..models.trained import load_cam_net as load_cam_net  # its name here before models/
from ..records import record_config
from .common import image_labels, resolve_device, seed_everything
from .training import TrainConfig, fit_and_save, loss_step, start_training


@dataclass
class TrainCamConfig(TrainConfig):
    """psa train_cls defaults (README command: lr 0.1, batch 16, 15 epochs, crop 448)."""

    epochs: int = 15
    batch_size: int = 16
    dropout: float = 0.5  # psa's Dropout2d before the classifier
    resize_long: tuple[int, int] = (256, 512)
    label_source: str = "auto"
    cls_labels: str | None = None
    classes: str | None = None  # classes file ("voc": VOC's 20); None: the dataset's


def train_cam(
    voc_root: str | os.PathLike,
    ids: Sequence[str],
    out_dir: str | os.PathLike,
    config: TrainCamConfig | None = None,
    progress: bool = True,
) -> Path:
    """Train the classifier on `ids`; writes OUT_DIR/cam_net.pt and returns its path.

    Resumes from the last finished epoch; does nothing when cam_net.pt is already there.
    """
    cfg = config or TrainCamConfig()
    final = start_training(cfg, out_dir, "train-cam", CAM_NET_FILE)
    out_dir = final.parent
    voc = VOCDataset(voc_root, cfg.label_source, cfg.cls_labels, cfg.classes)
    if final.is_file():
        # a clear error for another backbone or class count
        read_trained(final, cfg.backbone, "train-cam", voc.num_classes)
        return final
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    labels = image_labels(voc, ids)
    record_config(
        out_dir,
        "train-cam",
        cfg,
        {"images": len(ids), "label_source": voc.label_source, "classes": list(voc.classes)},
    )
    dataset = ClsTrainDataset(
        voc, ids, labels, cfg.resize_long, cfg.crop_size, cfg.jitter, cfg.seed, cfg.long_side
    )
    from ..models import classification_loss

    model = build_cam_net(cfg.backbone, cfg.weights, cfg.dropout, voc.num_classes)
    return fit_and_save(
        model,
        dataset,
        loss_step(classification_loss),
        final,
        name="train-cam",
        config=cfg,
        device=device,
        progress=progress,
    )
