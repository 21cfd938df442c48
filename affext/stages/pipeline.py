"""`affext run`: every stage in order in one work directory, then metrics.json and
overview.png.

WORKDIR/
  train_cam/  cam_net.pt, checkpoints, config      make_cam/  cam/*.npy, cam_pred/*.png
  aff_labels/ la/*.npy, ha/*.npy                   train_aff/ aff_net.pt, checkpoints
  make_rw/    rw/*.png, rw_crf/*.png               eval/      cam.json, rw.json, rw_crf.json
  metrics.json  overview.png  run.config.json
Each stage resumes where an interrupted run stopped.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.voc import VOCDataset, load_label_png, read_id_list, voc_palette
from .aff_labels import AffLabelsConfig, make_aff_labels
from .common import (
    StageTimer,
    atomic_save,
    atomic_write_json,
    cam_stack,
    default_workers,
    load_score_dict,
    record_config,
)
from .evaluate import evaluate
from .make_cam import MakeCamConfig, make_cam
from .make_rw import MakeRwConfig, make_rw
from .train_aff import TrainAffConfig, train_aff
from .train_cam import TrainCamConfig, train_cam

# The tiny backbone's preset: a CPU runs the whole pipeline in minutes, the same settings for
# every dataset (chosen for compute, not for one dataset). The networks train from scratch in
# a few epochs, so: AdamW instead of psa's SGD (which stays at the all-absent prior in this
# budget), no dropout and no hue jitter (the strongest regularisers; colour is a real cue).
# CAMs are made at a long side of 160 px; AffinityNet and the random walk work at 320 px, so
# that the stride-8 maps have enough cells per object (images are resized up or down and
# outputs brought back to full size). Everything else is psa's.
PRESETS: dict[str, dict[str, dict]] = {
    "tiny": {
        "train_cam": {
            "epochs": 10,
            "batch_size": 16,
            "crop_size": 128,
            "resize_long": (80, 160),
            "long_side": 160,
            "optimizer": "adam",
            "lr": 0.003,
            "dropout": 0.0,
            "jitter": (0.3, 0.3, 0.3, 0.0),
        },
        "make_cam": {"long_side": 160},
        "train_aff": {
            "epochs": 8,
            "batch_size": 8,
            "crop_size": 256,
            "long_side": 320,
            "optimizer": "adam",
            "lr": 0.003,
        },
        "make_rw": {"long_side": 320},
    },
}


@dataclass
class RunConfig:
    """Every stage's config; defaults are psa's, with PRESETS applied for the backbone."""

    backbone: str = "resnet38"
    device: str = "auto"
    num_workers: int = default_workers()
    seed: int = 0
    label_source: str = "auto"
    cls_labels: str | None = None
    overview_images: int = 6
    train_cam: TrainCamConfig = field(default_factory=TrainCamConfig)
    make_cam: MakeCamConfig = field(default_factory=MakeCamConfig)
    aff_labels: AffLabelsConfig = field(default_factory=AffLabelsConfig)
    train_aff: TrainAffConfig = field(default_factory=TrainAffConfig)
    make_rw: MakeRwConfig = field(default_factory=MakeRwConfig)

    @classmethod
    def for_backbone(cls, backbone: str, **overrides) -> RunConfig:
        """A config with the preset of `backbone`, then `overrides` ({"train_cam": {...}} for
        a stage's fields, plain keys for the run's own)."""
        cfg = cls(backbone=backbone)
        preset = PRESETS.get(backbone, {})
        stage_overrides = {k: v for k, v in overrides.items() if isinstance(v, dict)}
        own = {k: v for k, v in overrides.items() if not isinstance(v, dict)}
        for k, v in own.items():
            setattr(cfg, k, v)
        for stage in ("train_cam", "make_cam", "aff_labels", "train_aff", "make_rw"):
            sub = getattr(cfg, stage)
            values = {**preset.get(stage, {}), **stage_overrides.get(stage, {})}
            shared = {
                "backbone": cfg.backbone,
                "device": cfg.device,
                "num_workers": cfg.num_workers,
                "seed": cfg.seed,
                "label_source": cfg.label_source,
                "cls_labels": cfg.cls_labels,
            }
            names = {f.name for f in dataclasses.fields(sub)}
            values = {**{k: v for k, v in shared.items() if k in names}, **values}
            unknown = set(values) - names
            if unknown:
                raise ValueError(f"{stage} has no setting(s) {sorted(unknown)}")
            setattr(cfg, stage, dataclasses.replace(sub, **values))
        return cfg


def _ids(arg: str | os.PathLike | Sequence[str]) -> list[str]:
    if isinstance(arg, (str, os.PathLike)):
        return read_id_list(arg)
    return list(arg)


def run(
    voc_root: str | os.PathLike,
    train_ids: str | os.PathLike | Sequence[str],
    eval_ids: str | os.PathLike | Sequence[str],
    workdir: str | os.PathLike,
    config: RunConfig | None = None,
    progress: bool = True,
) -> dict:
    """The whole pipeline (method.md sections 1-7). Returns the metrics (also metrics.json).

    train_ids / eval_ids: list files or lists of ids. CAMs and random walks are made for both
    lists; affinity labels and the two networks use the training list only.
    """
    cfg = config or RunConfig.for_backbone("resnet38")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    train = _ids(train_ids)
    evals = _ids(eval_ids)
    voc = VOCDataset(voc_root, cfg.label_source, cfg.cls_labels)
    voc.check_ids(train + evals)
    if not voc.has_masks(evals):
        missing = [i for i in evals if voc.mask_path(i) is None][:3]
        raise FileNotFoundError(f"the eval list needs ground-truth masks; none for {missing}")
    both = list(dict.fromkeys(train + evals))
    record_config(
        work,
        "run",
        cfg,
        {"voc_root": str(voc_root), "train_images": len(train), "eval_images": len(evals)},
    )
    times: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        t = StageTimer()
        out = fn(*args, **kwargs)
        times[name] = round(t.seconds, 2)
        return out

    timed("train-cam", train_cam, voc_root, train, work / "train_cam", cfg.train_cam, progress)
    timed(
        "make-cam",
        make_cam,
        voc_root,
        both,
        work / "train_cam",
        work / "make_cam",
        cfg.make_cam,
        progress,
    )
    timed(
        "make-aff-labels",
        make_aff_labels,
        voc_root,
        train,
        work / "make_cam" / "cam",
        work / "aff_labels",
        cfg.aff_labels,
        progress,
    )
    timed(
        "train-aff",
        train_aff,
        voc_root,
        train,
        work / "aff_labels",
        work / "train_aff",
        cfg.train_aff,
        progress,
    )
    timed(
        "make-rw",
        make_rw,
        voc_root,
        both,
        work / "make_cam" / "cam",
        work / "train_aff",
        work / "make_rw",
        cfg.make_rw,
        progress,
    )
    t = StageTimer()
    results = {
        "cam": evaluate(
            voc_root,
            work / "make_cam" / "cam_pred",
            evals,
            work / "eval" / "cam.json",
            progress=progress,
        ),
        "rw": evaluate(
            voc_root, work / "make_rw" / "rw", evals, work / "eval" / "rw.json", progress=progress
        ),
    }
    if cfg.make_rw.write_crf:
        results["rw_crf"] = evaluate(
            voc_root,
            work / "make_rw" / "rw_crf",
            evals,
            work / "eval" / "rw_crf.json",
            progress=progress,
        )
    times["eval"] = round(t.seconds, 2)
    metrics = {f"{k}_miou": v["miou"] for k, v in results.items()}
    metrics.update(
        {
            "eval_images": len(evals),
            "train_images": len(train),
            "backbone": cfg.backbone,
            "per_class_iou": {k: v["iou"] for k, v in results.items()},
            "precision": {k: v["mean_precision"] for k, v in results.items()},
            "recall": {k: v["mean_recall"] for k, v in results.items()},
            "stage_seconds": times,
        }
    )
    t = StageTimer()
    write_overview(
        voc,
        evals[: cfg.overview_images],
        work / "make_cam" / "cam",
        work / "make_rw" / "rw",
        work / "overview.png",
    )
    times["overview"] = round(t.seconds, 2)
    metrics["total_seconds"] = round(sum(times.values()), 2)
    atomic_write_json(work / "metrics.json", metrics)
    return metrics


def _colour(label: np.ndarray) -> np.ndarray:
    palette = np.asarray(voc_palette(), np.uint8).reshape(256, 3)
    return palette[label]


def _cam_picture(rgb: np.ndarray, cam: dict[int, np.ndarray]) -> np.ndarray:
    """The image darkened, with each class's CAM painted in its palette colour."""
    h, w = rgb.shape[:2]
    cams = cam_stack(cam, (h, w))
    top = cams.max(axis=0)[..., None]
    colour = _colour((cams.argmax(axis=0) + 1).astype(np.uint8)).astype(np.float32)
    out = (
        rgb.astype(np.float32) * 0.35 * (1 - top)
        + colour * top
        + rgb.astype(np.float32) * 0.35 * top
    )
    return np.clip(out, 0, 255).astype(np.uint8)


def write_overview(
    voc: VOCDataset,
    ids: Sequence[str],
    cam_dir: str | os.PathLike,
    rw_dir: str | os.PathLike,
    out: str | os.PathLike,
    height: int = 128,
) -> Path:
    """overview.png: one row per image: image | ground truth | CAM | random walk."""
    rows = []
    for image_id in ids:
        rgb = voc.load_image(image_id)
        gt = (
            voc.load_mask(image_id)
            if voc.mask_path(image_id)
            else np.zeros(rgb.shape[:2], np.uint8)
        )
        cam = load_score_dict(Path(cam_dir) / f"{image_id}.npy", "CAM")
        rw = load_label_png(Path(rw_dir) / f"{image_id}.png")
        panels = [rgb, _colour(gt), _cam_picture(rgb, cam), _colour(rw)]
        scale = height / rgb.shape[0]
        size = (max(1, int(round(rgb.shape[1] * scale))), height)
        panels = [np.asarray(Image.fromarray(p).resize(size, Image.NEAREST)) for p in panels]
        gap = np.full((height, 4, 3), 255, np.uint8)
        rows.append(np.concatenate(sum(([p, gap] for p in panels), [])[:-1], axis=1))
    if not rows:
        raise ValueError("no images for the overview")
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    picture = Image.fromarray(np.concatenate(rows, axis=0))
    atomic_save(out, lambda f: picture.save(f, format="PNG"))
    return Path(out)


__all__ = ["PRESETS", "RunConfig", "run", "write_overview"]
