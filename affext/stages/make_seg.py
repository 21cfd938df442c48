"""Stage `make-seg`: the segmentation network's predictions (docs/method.md §8).

OUT/seg/<id>.png: argmax of the class probabilities averaged over scales and horizontal
flips (DeepLab's multi-scale inference), at the image's size (VOC palette); OUT/seg_crf/
<id>.png: those probabilities refined by the dense CRF with docs/method.md §2's settings.
Unlike the pseudo labels, nothing here knows an image's classes: every class competes.

Memory is bounded by the working size (long_side), as in make-cam and make-rw: an image
larger than it has its probabilities and dCRF at the working size, and its labels brought
to the image's size in bands of rows (argmax_at_size); no full-size float array is held.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.datasets import MultiScaleDataset, argmax_at_size, kept_size, load_working_image
from ..data.voc import VOCDataset, save_label_png
from ..models.trained import load_seg_net
from .common import default_workers
from .crf import (
    CRFConfig,
    CRFPool,
    crf_inference,
    default_crf_workers,
    refined_index,
    require_backend,
)
from .runner import ImageStage

# DeepLab v3's evaluation scales (with flips)
DEEPLAB_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@dataclass
class MakeSegConfig:
    backbone: str = "resnet38"
    scales: tuple[float, ...] = DEEPLAB_SCALES
    flip: bool = True
    crf: CRFConfig = field(default_factory=CRFConfig)
    write_crf: bool = True
    long_side: int | None = None  # working size: long side resized to this (None: as is)
    num_workers: int = default_workers()
    crf_workers: int = default_crf_workers()  # pydensecrf processes; 0: in this process
    device: str = "auto"
    classes: str | None = None  # classes file ("voc": VOC's 20); None: the dataset's


@torch.no_grad()
def multiscale_probs(
    model: torch.nn.Module,
    scaled: Sequence[torch.Tensor],
    size: tuple[int, int],
    flip: bool = True,
) -> torch.Tensor:
    """The mean over scales (and flips) of the class probabilities, each pass's logits
    upsampled bilinearly to `size`. scaled: (3, h_s, w_s) tensors. Returns (K, H, W)."""
    total, passes = None, 0
    for x in scaled:
        batch = torch.stack([x, x.flip(-1)]) if flip else x[None]
        logits = F.interpolate(model(batch), size=size, mode="bilinear", align_corners=False)
        probs = torch.softmax(logits.float(), dim=1)
        probs = probs[0] + probs[1].flip(-1) if flip else probs[0]
        total = probs if total is None else total + probs
        passes += len(batch)
    return total / passes


def _refine(
    path: Path,
    rgb: np.ndarray,
    probs: np.ndarray | torch.Tensor,
    crf: CRFConfig,
    size: tuple[int, int],
) -> tuple[Path, np.ndarray | torch.Tensor, tuple[int, int]]:
    """A dCRF job (in a pydensecrf process, or in this one): the marginals of the (K, h, w)
    probabilities of every class on the (h, w) RGB, with the PNG's path and (H, W) size."""
    return path, crf_inference(rgb, probs, crf), size


def _write_refined(job: tuple[Path, np.ndarray | torch.Tensor, tuple[int, int]]) -> None:
    """seg_crf/<id>.png from a dCRF job's marginals, here (a process runs no torch): their
    argmax at the image's size (upsampled in bands where that is larger)."""
    path, refined, size = job
    save_label_png(path, refined_index(refined, size))


def make_seg(
    voc_root: str | os.PathLike,
    ids: Sequence[str],
    seg_net_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: MakeSegConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write OUT_DIR/seg/<id>.png (and seg_crf/) for every id; finished ones are kept."""
    cfg = config or MakeSegConfig()
    if cfg.write_crf:
        require_backend(cfg.crf)
    voc = VOCDataset(voc_root, label_source="mask", classes=cfg.classes)
    outputs = ["seg/{}.png"] + (["seg_crf/{}.png"] if cfg.write_crf else [])
    run = ImageStage("make-seg", cfg, voc, ids, out_dir, outputs)
    device, out_dir = run.device, run.out_dir
    seg_dir, crf_dir = out_dir / "seg", out_dir / "seg_crf"
    model = load_seg_net(seg_net_dir, cfg.backbone, voc.num_classes, device)
    todo = run.start(overwrite)
    no_labels = np.zeros((len(todo), 0), np.float32)
    loader = run.loader(
        MultiScaleDataset(voc, todo, no_labels, cfg.scales, cfg.long_side), batch_size=None
    )
    bar = run.bar(progress, loader)
    # the dCRF: in this process (affext's, on the device), or pydensecrf's processes
    pool = None
    if cfg.write_crf:
        pool = CRFPool(cfg.crf, cfg.crf_workers if todo else 0, on_done=_write_refined)
    failed = True
    try:
        for image_id, scaled, _, size in bar:
            # probabilities at the image's size, or at the working size for a larger image
            size = tuple(size)
            kept = kept_size(size, cfg.long_side)
            probs = multiscale_probs(model, [x.to(device) for x in scaled], kept, cfg.flip)
            host = probs.cpu().numpy()
            if kept == size:
                label = host.argmax(axis=0).astype(np.uint8)
            else:
                label = argmax_at_size(host, size)
            save_label_png(seg_dir / f"{image_id}.png", label)
            if not cfg.write_crf:
                continue
            if kept == size:
                rgb = voc.load_image(image_id)
            else:  # the RGB at the working size, as the probabilities
                rgb = np.asarray(load_working_image(voc, image_id, cfg.long_side)[0])
            # processes take host arrays; in this process the dCRF runs where probs are
            scores = host if pool.workers else probs
            pool.submit(_refine, crf_dir / f"{image_id}.png", rgb, scores, cfg.crf, size)
        failed = False
    finally:
        try:
            if pool is not None:
                pool.close(cancel=failed)
        finally:
            bar.close()
    return out_dir
