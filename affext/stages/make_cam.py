"""Stage `make-cam`: multi-scale, flipped CAM inference (docs/method.md §1, psa infer_cls).

OUT/cam/<id>.npy: psa's dict {class_index 0..C-1: (H, W) float32} (C = 20 for VOC), present
classes only, each map divided by (its max + 1e-5); an image larger than the working size
(long_side) has its maps at the working size instead (readers bring them to the size they
need). OUT/cam_pred/<id>.png: the CAM-only prediction, argmax over [bg_threshold, M_1..M_C]
(psa's --out_cam_pred), for the CAM mIoU, at the image's size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.datasets import MultiScaleDataset, argmax_at_size, kept_size
from ..data.voc import VOCDataset, save_label_png
from ..files import save_score_dict
from ..models.trained import load_cam_net
from .common import default_workers, image_labels
from .runner import ImageStage


@dataclass
class MakeCamConfig:
    backbone: str = "resnet38"
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    bg_threshold: float = 0.2  # constant background score of the CAM-only prediction
    long_side: int | None = None  # working size: long side resized to this (None: as is)
    label_source: str = "auto"
    cls_labels: str | None = None
    classes: str | None = None  # classes file ("voc": VOC's 20); None: the dataset's
    num_workers: int = default_workers()
    device: str = "auto"


@torch.no_grad()
def multiscale_cam(
    model: torch.nn.Module,
    scaled: Sequence[torch.Tensor],
    labels: torch.Tensor,
    size: tuple[int, int],
    flip: bool = True,
) -> torch.Tensor:
    """Sum over scales (and flips) of the CAMs upsampled to `size`, absent classes zeroed,
    each class map then divided by (its max + 1e-5). scaled: (3, h_s, w_s) tensors;
    labels: (C,). Returns (C, H, W) float32."""
    total = None
    for x in scaled:
        batch = torch.stack([x, x.flip(-1)]) if flip else x[None]
        cams = F.relu(model.cams(batch))
        cams = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
        if flip:
            cams = cams[0] + cams[1].flip(-1)
        else:
            cams = cams[0]
        total = cams if total is None else total + cams
    total = total * labels.to(total)[:, None, None]
    peak = total.flatten(1).max(dim=1).values[:, None, None]
    return (total / (peak + 1e-5)).float()


def cam_prediction(cams: np.ndarray, bg_threshold: float = 0.2) -> np.ndarray:
    """(H, W) uint8 argmax over [bg_threshold, M_1..M_C]; cams (C, H, W)."""
    bg = np.full((1,) + cams.shape[1:], bg_threshold, np.float32)
    return np.argmax(np.concatenate([bg, cams]), axis=0).astype(np.uint8)


def make_cam(
    voc_root: str | os.PathLike,
    ids: Sequence[str],
    cam_net_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: MakeCamConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write OUT_DIR/cam/<id>.npy and OUT_DIR/cam_pred/<id>.png; existing ones are kept."""
    cfg = config or MakeCamConfig()
    voc = VOCDataset(voc_root, cfg.label_source, cfg.cls_labels, cfg.classes)
    run = ImageStage("make-cam", cfg, voc, ids, out_dir, ["cam/{}.npy", "cam_pred/{}.png"])
    device, out_dir = run.device, run.out_dir
    cam_dir, pred_dir = out_dir / "cam", out_dir / "cam_pred"
    model = load_cam_net(cam_net_dir, cfg.backbone, device, voc.num_classes)
    todo = run.start(overwrite)
    labels = image_labels(voc, todo)
    loader = run.loader(
        MultiScaleDataset(voc, todo, labels, cfg.scales, cfg.long_side), batch_size=None
    )
    bar = run.bar(progress, loader)
    for image_id, scaled, label, size in bar:
        scaled = [x.to(device) for x in scaled]
        # CAMs at the original size, or at the working size for a larger image (memory bound
        # by the working size); the prediction PNG at the original size either way
        kept = kept_size(tuple(size), cfg.long_side)
        cams = multiscale_cam(model, scaled, label, kept, cfg.flip).cpu().numpy()
        present = np.nonzero(label.numpy() > 1e-5)[0]
        save_score_dict(cam_dir / f"{image_id}.npy", {int(c): cams[c] for c in present})
        if kept == tuple(size):
            pred = cam_prediction(cams, cfg.bg_threshold)
        else:  # absent classes are 0 < bg_threshold: the argmax over bg and present ones
            bg = np.full((1,) + kept, cfg.bg_threshold, np.float32)
            index = argmax_at_size(np.concatenate([bg, cams[present]]), tuple(size))
            pred = np.asarray([0, *(present + 1)], np.uint8)[index]
        save_label_png(pred_dir / f"{image_id}.png", pred)
    return out_dir
