"""The training loop shared by train-cam, train-aff and train-seg (docs/method.md §4's
optimiser): SGD with momentum, psa's four parameter groups, poly learning rate, a checkpoint
per epoch.
Adam (decoupled weight decay) over the same groups is the alternative for networks trained
from scratch in a few epochs, where plain SGD converges too slowly."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim.lr_scheduler import PolynomialLR
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .. import dist
from ..files import atomic_write_json
from ..models.base import Network
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models.trained import read_trained
from ..records import check_config
from .common import default_workers
from .replicas import epoch_loader, replicate

OPTIMIZERS = ("sgd", "adam")


@dataclass
class TrainConfig:
    """What the training stages share; psa's values (both READMEs: lr 0.1, crop 448)."""

    backbone: str = "resnet38"
    weights: str | None = None  # pretrained backbone weights (psa: ImageNet); None: scratch
    # an ImageNet backbone (IMAGENET_WEIGHTS) without weights is refused unless this is set
    from_scratch: bool = False
    epochs: int = 8
    batch_size: int = 8
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    optimizer: str = "sgd"  # "sgd" (psa) or "adam" (AdamW; presets training from scratch)
    poly_power: float = 0.9
    crop_size: int = 448
    jitter: tuple[float, float, float, float] = (0.3, 0.3, 0.3, 0.1)
    long_side: int | None = None  # working size: long side resized to this (None: as is)
    num_workers: int = default_workers()
    seed: int = 0
    device: str = "auto"


# Where each backbone's ImageNet weights come from (what build_backbone's `weights` takes).
IMAGENET_WEIGHTS = {
    "resnet38": "psa's ImageNet ResNet-38, ilsvrc-cls_rna-a1_cls1000_ep-0001.params (linked "
    "from psa's README: github.com/itijyou/ademxapp), converted once with `affext psa "
    "convert_weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params res38_imagenet.pth`",
    "resnet50": "torchvision's ImageNet ResNet-50 state-dict file, e.g. resnet50-0676ba61.pth "
    "(torchvision.models.ResNet50_Weights.IMAGENET1K_V1)",
}


def require_weights(config: TrainConfig) -> None:
    """Refuse, before any work, to train an ImageNet backbone (IMAGENET_WEIGHTS) from scratch
    unless config.from_scratch asks for it: psa starts from ImageNet weights, and from
    scratch its schedule learns nothing useful. train-seg's init_from (a trained network's
    backbone) does as well as weights."""
    source = IMAGENET_WEIGHTS.get(config.backbone)
    trained = config.weights or getattr(config, "init_from", None)
    if source is None or trained or config.from_scratch:
        return
    raise ValueError(
        f"no --weights for the {config.backbone} backbone, which would then train from scratch "
        f"(psa starts from ImageNet weights; from scratch its epochs learn nothing useful). "
        f"Pass --weights with {source}; or --backbone tiny for the CPU demo; or "
        "--from-scratch to train from scratch all the same"
    )


def start_training(
    config: TrainConfig, out_dir: str | os.PathLike, stage: str, file_name: str
) -> Path:
    """A training stage's start: an ImageNet backbone without weights refused before any work
    (require_weights), OUT_DIR made, and refused when it holds the stage's outputs of other
    settings (check_config). Returns OUT_DIR/<file_name>, the trained network's path."""
    require_weights(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_config(out_dir, stage, config)  # outputs of other settings: refused
    return out_dir / file_name


def make_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, momentum: float, optimizer: str = "sgd"
) -> torch.optim.Optimizer:
    """SGD (psa) or AdamW over psa's groups: pretrained weights (lr, decay), pretrained biases
    (2 lr, no decay), new weights (10 lr, decay), new biases (20 lr, no decay)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    groups = model.param_groups(lr=lr, weight_decay=weight_decay)
    for g in groups:
        g["initial_lr"] = g["lr"]
    if optimizer == "adam":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def poly_schedule(
    optimizer: torch.optim.Optimizer, max_step: int, power: float = 0.9
) -> PolynomialLR:
    """psa's PolyOptimizer: step s (0-based) runs at initial_lr * (1 - s / max_step) ** power,
    the scheduler stepped once after each optimiser step."""
    return PolynomialLR(optimizer, total_iters=max_step, power=power)


def fit(
    model: Network,
    dataset: Dataset,
    step_loss: Callable,
    *,
    name: str,
    out_dir: Path,
    config: TrainConfig,
    device: torch.device,
    progress: bool = True,
) -> list[dict]:
    """Train `model` for config.epochs, resuming from OUT_DIR/<name>.checkpoint.pt if present.

    step_loss(model, batch) -> (loss tensor, {name: float} for the log). The batch size is at
    most len(dataset). Returns the per-epoch log (also written to OUT_DIR/<name>.log.json);
    the per-step values and learning rate also go to TensorBoard event files in
    OUT_DIR/tensorboard/ where the tensorboard package is installed.

    Launched by torchrun (affext.dist), every process trains a DistributedDataParallel
    replica on its share of each global batch: config.batch_size stays the global batch
    (psa's), each of the N processes takes batch_size / N images of it (DistributedSampler
    over the same shuffled order one process would use), BatchNorm layers that train
    normalise over the global batch (dist.GlobalBatchNorm), and the learning-rate schedule
    counts global steps, so N processes train the model one would, up to floating-point
    order (and for dropout, which draws its masks per process). Rank 0 alone writes the
    checkpoints and the logs; a checkpoint resumes with any number of processes.
    """
    cfg = config
    backbone, epochs = cfg.backbone, cfg.epochs
    if len(dataset) == 0:
        raise ValueError(f"{name}: no training images")
    batch_size = min(cfg.batch_size, len(dataset))
    world = dist.world()
    if batch_size % world:
        raise ValueError(
            f"{name}: the batch size {batch_size} (batch_size, at most the number of images) "
            f"is the global batch, as psa's, split over the {world} processes, so it must be a "
            f"multiple of {world}: set batch_size (--batch-size or the config file) to a "
            f"multiple of {world}, or launch a number of processes that divides it"
        )
    steps_per_epoch = len(dataset) // batch_size
    max_step = steps_per_epoch * epochs
    model.to(device)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.momentum, cfg.optimizer)
    schedule = poly_schedule(opt, max_step, cfg.poly_power)
    ckpt_path = out_dir / f"{name}.checkpoint.pt"
    start_epoch, log = 0, []
    if ckpt_path.is_file():
        start_epoch, log = _resume(ckpt_path, model, opt, schedule, backbone, name)
    net = replicate(model, device)
    board = _board(out_dir, start_epoch * steps_per_epoch)
    try:
        for epoch in range(start_epoch, epochs):
            loader = epoch_loader(dataset, epoch, batch_size // world, cfg, device)
            desc = f"{name} epoch {epoch + 1}/{epochs}"
            step = _Logger(board, name, epoch * steps_per_epoch, opt)
            means = _train_epoch(
                net, model, loader, step_loss, opt, schedule, device, desc, progress, step
            )
            log.append({"epoch": epoch + 1, **means})
            if dist.is_main():
                save_checkpoint(
                    model,
                    ckpt_path,
                    optimizer=opt.state_dict(),
                    schedule=schedule.state_dict(),
                    epoch=epoch + 1,
                    log=log,
                )
            dist.barrier()
            if progress:
                tqdm.write(f"{desc}: " + " ".join(f"{k} {v:.4f}" for k, v in means.items()))
    finally:
        dist.use_local_batch_norm(model)
        if board is not None:
            board.close()
    if dist.is_main():
        atomic_write_json(out_dir / f"{name}.log.json", log)
    return log


def loss_step(loss: Callable) -> Callable:
    """fit's step_loss for (image, labels) batches: loss(model(image), labels), logged as
    "loss" (train-cam's classification, train-seg's segmentation)."""

    def step(model, batch):
        image, labels = batch
        value = loss(model(image), labels)
        return value, {"loss": value.item()}

    return step


def _board(out_dir: Path, first_step: int):
    """Rank 0's TensorBoard writer into OUT_DIR/tensorboard (events after `first_step`, left
    by an interrupted run, are dropped), or None without the tensorboard package."""
    if not dist.is_main():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: the JSON log is always written
        return None
    return SummaryWriter(str(out_dir / "tensorboard"), purge_step=first_step)


class _Logger:
    """Per-step values (averaged over ranks) and learning rates to TensorBoard."""

    def __init__(self, board, name: str, first_step: int, opt: torch.optim.Optimizer):
        self.board, self.name, self.step, self.opt = board, name, first_step, opt

    def __call__(self, parts: dict[str, float]) -> None:
        if self.board is not None:
            for k, v in parts.items():
                self.board.add_scalar(f"{self.name}/{k}", v, self.step)
            for g in self.opt.param_groups:
                if g["params"]:
                    tag = g.get("name", "lr")
                    self.board.add_scalar(f"{self.name}/lr/{tag}", g["lr"], self.step)
        self.step += 1


def _train_epoch(
    net,
    model: Network,
    loader: DataLoader,
    step_loss: Callable,
    opt: torch.optim.Optimizer,
    schedule: PolynomialLR,
    device: torch.device,
    desc: str,
    progress: bool,
    on_step: Callable[[dict], None],
) -> dict[str, float]:
    """One pass over `loader`, an optimiser and schedule step a batch; the mean of each of
    step_loss's logged values (each step's averaged over ranks). `net` is what step_loss
    calls: `model` itself, or its DDP replica."""
    model.train()
    sums: dict[str, float] = {}
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False)
    for i, batch in enumerate(bar):
        batch = [b.to(device, non_blocking=True) for b in batch]
        loss, parts = step_loss(net, batch)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(
                f"{desc}, step {i}: the loss became {loss.item()}; lower the learning rate"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        parts = dist.mean(parts)
        on_step(parts)
        opt.step()
        schedule.step()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        bar.set_postfix(loss=f"{parts.get('loss', loss.item()):.4f}")
    return {k: v / len(loader) for k, v in sums.items()}


def fit_and_save(
    model: Network,
    dataset: Dataset,
    step_loss: Callable,
    final: Path,
    *,
    name: str,
    config: TrainConfig,
    device: torch.device,
    progress: bool = True,
    **meta,
) -> Path:
    """fit() with its per-epoch checkpoints beside FINAL, then the trained network at FINAL
    (written by rank 0; `meta` kept in it, see save_checkpoint)."""
    fit(
        model,
        dataset,
        step_loss,
        name=name,
        out_dir=final.parent,
        config=config,
        device=device,
        progress=progress,
    )
    if dist.is_main():
        save_checkpoint(model, final, **meta)
    dist.barrier()
    return final


def _resume(
    path: Path,
    model: Network,
    opt: torch.optim.Optimizer,
    schedule: PolynomialLR,
    backbone: str,
    name: str,
) -> tuple[int, list]:
    """Load a per-epoch checkpoint into model, optimiser and schedule; (epochs done, log)."""
    meta = load_checkpoint(
        model, read_trained(path, backbone, name, getattr(model, "num_classes", None))
    )
    if "schedule" not in meta:
        raise ValueError(
            f"{name} checkpoint {str(path)!r} was written by an earlier affext without its "
            "learning-rate schedule: delete it to train from the start"
        )
    opt.load_state_dict(meta["optimizer"])
    schedule.load_state_dict(meta["schedule"])
    return meta["epoch"], meta["log"]
