"""Stage `train-aff`: AffinityNet from the la / ha labels (docs/method.md §2-4)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.datasets import AffTrainDataset
from ..data.voc import VOCDataset
from ..files import require_files
from ..models.trained import AFF_NET_FILE, build_aff_net, read_trained
from ..models.trained import load_aff_net as load_aff_net  # its name here before models/
from ..records import record_config
from .common import resolve_device, seed_everything
from .training import TrainConfig, fit_and_save, start_training


@dataclass
class TrainAffConfig(TrainConfig):
    """psa train_aff defaults (README command: lr 0.1, batch 8, 8 epochs, crop 448)."""

    radius: int = 5
    region: str = "psa"


def _aff_step(radius: int, region: str):
    from .. import pair_loss

    def step(model, batch):
        image, labels = batch
        aff = model.affinity(image, radius)
        if aff.shape[-2:] != labels.shape[-2:]:
            raise ValueError(
                f"AffinityNet gives a {tuple(aff.shape[-2:])} map for a "
                f"{tuple(image.shape[-2:])} crop but the labels are "
                f"{tuple(labels.shape[-2:])}: the backbone's stride must be 8"
            )
        out = _global_batch(pair_loss(aff, labels, radius=radius, region=region))
        return out.loss, {
            "loss": out.loss.item(),
            "bg_loss": out.bg_loss.item(),
            "fg_loss": out.fg_loss.item(),
            "neg_loss": out.neg_loss.item(),
            "bg_count": float(out.bg_count),
            "fg_count": float(out.fg_count),
            "neg_count": float(out.neg_count),
        }

    return step


def _global_batch(out):
    """Under torchrun: this rank's share of the global batch's loss, times the world size
    (DDP averages the ranks' gradients), so that N processes train as one does. The pair
    loss divides by the pair counts of the whole batch (docs/method.md §4), so each rank's
    sums are divided by the counts summed over the ranks; the logged values, averaged over
    ranks, are then the global batch's (counts: its sums)."""
    from .. import dist

    world = dist.world()
    if world == 1:
        return out
    local = torch.stack([out.bg_count, out.fg_count, out.neg_count]).double()
    total = dist.all_sum(local.clone())
    scale = (world * (local + 1e-5) / (total + 1e-5)).to(out.loss.dtype)
    bg, fg, neg = out.bg_loss * scale[0], out.fg_loss * scale[1], out.neg_loss * scale[2]
    counts = (world * local).tolist()
    return type(out)(bg / 4 + fg / 4 + neg / 2, bg, fg, neg, *counts)


def train_aff(
    voc_root: str | os.PathLike,
    ids: Sequence[str],
    aff_label_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: TrainAffConfig | None = None,
    progress: bool = True,
) -> Path:
    """Train AffinityNet on `ids` with AFF_LABEL_DIR/{la,ha}/<id>.npy; writes
    OUT_DIR/aff_net.pt and returns its path. Resumes per epoch; a no-op once finished."""
    cfg = config or TrainAffConfig()
    final = start_training(cfg, out_dir, "train-aff", AFF_NET_FILE)
    out_dir = final.parent
    if final.is_file():
        read_trained(final, cfg.backbone, "train-aff")
        return final
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    voc = VOCDataset(voc_root, label_source="mask")  # image-level labels are not used here
    voc.check_ids(ids)
    aff_label_dir = Path(aff_label_dir)
    require_files(
        ids,
        [aff_label_dir / "la" / "{}.npy", aff_label_dir / "ha" / "{}.npy"],
        "affinity labels",
        "run make-aff-labels first",
    )
    record_config(out_dir, "train-aff", cfg, {"images": len(ids)})
    dataset = AffTrainDataset(
        voc,
        ids,
        aff_label_dir / "la",
        aff_label_dir / "ha",
        cfg.crop_size,
        cfg.jitter,
        seed=cfg.seed,
        long_side=cfg.long_side,
    )
    model = build_aff_net(cfg.backbone, cfg.weights)
    return fit_and_save(
        model,
        dataset,
        _aff_step(cfg.radius, cfg.region),
        final,
        name="train-aff",
        config=cfg,
        device=device,
        progress=progress,
    )
