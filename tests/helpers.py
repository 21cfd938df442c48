"""What several test files share: the devices and dtypes the kernels take and their
tolerances, the CUDA mark, small synthetic datasets, test inputs. (conftest.py holds the
shared fixtures: `device` over DEVICES, a module's `ids` of its `voc`.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from affext.data import SynthConfig, make_synthetic_voc

# The tests that need a GPU: `pytest -m cuda` selects them (scripts/gpu_check.sh), and
# conftest skips them where torch sees no CUDA device.
requires_cuda = pytest.mark.cuda

# ---- devices and dtypes ---------------------------------------------------------------------
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# The dtypes every kernel takes on every device, and those the CUDA kernels take besides
# (PAR takes them on the CPU too).
FULL_FLOATS = (torch.float32, torch.float64)
HALF_FLOATS = (torch.float16, torch.bfloat16)
# How far a kernel's result in a dtype may lie from float64's on the same (rounded) inputs,
# relative and absolute: the CUDA kernels against the CPU's.
TOLERANCES = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def float_dtypes(device: str) -> tuple[torch.dtype, ...]:
    """The floating dtypes the affinity, pair-loss and walk kernels take on `device`."""
    return FULL_FLOATS + (HALF_FLOATS if torch.device(device).type == "cuda" else ())


def small_voc(
    out: Path, num_train: int, num_val: int, size: tuple[int, int] = (72, 80), seed: int = 0
) -> Path:
    """A synthetic dataset in VOC layout at OUT, images of `size` (min, max) pixels a side."""
    cfg = SynthConfig(
        num_train=num_train, num_val=num_val, min_size=size[0], max_size=size[1], seed=seed
    )
    return make_synthetic_voc(out, cfg, progress=False)


def cams_from_masks(voc: Path, ids: list[str], out: Path, seed: int = 0) -> Path:
    """psa-format CAMs at OUT from VOC's ground truth: each present class's mask, smoothed and
    noisy (a walk and a dCRF have something to refine)."""
    from affext.data import VOCDataset
    from affext.files import save_score_dict

    data = VOCDataset(voc)
    rng = np.random.default_rng(seed)
    for i in ids:
        mask = data.load_mask(i)
        cam = {}
        for c in np.nonzero(data.image_labels(i))[0]:
            m = torch.from_numpy((mask == c + 1).astype(np.float32))[None, None]
            m = torch.nn.functional.avg_pool2d(m, 9, stride=1, padding=4, count_include_pad=False)
            m = np.clip(m[0, 0].numpy() * 0.8 + rng.random(m.shape[2:], np.float32) * 0.2, 0, 1)
            cam[int(c)] = (m / m.max()).astype(np.float32)
        save_score_dict(out / f"{i}.npy", cam)
    return out


def structured_features(b, c, h, w, dtype=torch.float32):
    """(b, c, h, w) piecewise-constant regions plus noise, so that affinities span (0, 1)."""
    coarse = torch.randn(b, c, (h + 3) // 4, (w + 3) // 4, dtype=dtype)
    up = torch.nn.functional.interpolate(coarse, scale_factor=4, mode="nearest")[:, :, :h, :w]
    return up + 0.3 * torch.randn(b, c, h, w, dtype=dtype)


def miou_by_hand(pred_pngs: list[Path], gt_pngs: list[Path], num_classes: int = 21) -> float:
    """VOC mIoU in percent (3 decimals) of palette PNGs, written apart from affext's evaluate:
    per class tp / (gt | pred) over pixels whose ground truth is not 255, classes that occur
    in neither left out of the mean."""
    tp = np.zeros(num_classes)
    union = np.zeros(num_classes)
    for pred_path, gt_path in zip(pred_pngs, gt_pngs, strict=True):
        pred = np.array(Image.open(pred_path))
        gt = np.array(Image.open(gt_path))
        valid = gt != 255
        for c in range(num_classes):
            tp[c] += np.sum((gt == c) & (pred == c) & valid)
            union[c] += np.sum(((gt == c) | (pred == c)) & valid)
    counted = union > 0
    return round(100.0 * float(np.mean(tp[counted] / union[counted])), 3)


def run_args(voc: Path, work: Path, *extra: str) -> list[str]:
    """`affext run`'s arguments on VOC's train and val lists into WORK, quiet, then EXTRA."""
    lists = voc / "ImageSets" / "Segmentation"
    return [
        "run",
        "--voc-root",
        str(voc),
        "--train-list",
        str(lists / "train.txt"),
        "--eval-list",
        str(lists / "val.txt"),
        "--workdir",
        str(work),
        "--quiet",
        *extra,
    ]


def replace_stages(monkeypatch, functions: dict) -> None:
    """Replace the functions of stages of the stage registry (by any of their names, e.g.
    {"make_rw": fake}) for one test: `affext run` and the stage commands call those."""
    from dataclasses import replace

    from affext.stages import registry

    faked = []
    for s in registry.STAGES:
        names = {s.name, s.command, s.function.__name__} & set(functions)
        faked.append(replace(s, function=functions[names.pop()]) if names else s)
    monkeypatch.setattr(registry, "STAGES", tuple(faked))
