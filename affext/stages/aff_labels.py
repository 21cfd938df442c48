"""Stage `make-aff-labels`: la / ha dCRF score maps from the CAMs (docs/method.md §2).

For each image: [M_bg; M_c for the present classes] with M_bg = (1 - max_c M_c) ** alpha, for
alpha_low ("la") and alpha_high ("ha"), refined by the dense CRF on the RGB image. Saved as
psa does: OUT/la/<id>.npy and OUT/ha/<id>.npy, dicts {0: background, c + 1: class c}.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import dist
from ..data.datasets import load_cam_and_image
from ..data.voc import VOCDataset
from ..files import record_config, save_score_dict
from .common import background_score, die_with_parent, pending, require_cams
from .crf import CRFConfig, crf_inference


@dataclass
class AffLabelsConfig:
    alpha_low: float = 4.0  # psa --low_alpha
    alpha_high: float = 32.0  # psa --high_alpha (16/24 in the paper)
    crf: CRFConfig = field(default_factory=CRFConfig)
    num_workers: int = 1  # processes running the CRF (it is single-threaded)
    classes: str | None = None  # classes file ("voc": VOC's 20); None: the dataset's


def crf_with_alpha(
    image: np.ndarray, cam: dict[int, np.ndarray], alpha: float, crf: CRFConfig | None = None
) -> dict[int, np.ndarray]:
    """psa's _crf_with_alpha: dCRF of [M_bg(alpha); M_c present]; returns {0: bg, c + 1: M_c}."""
    keys = sorted(int(k) for k in cam)
    h, w = image.shape[:2]
    cams = (
        np.stack([np.asarray(cam[k], np.float32) for k in keys])
        if keys
        else np.zeros((0, h, w), np.float32)
    )
    if cams.shape[1:] != (h, w):
        raise ValueError(f"CAM maps are {cams.shape[1:]} but the image is {(h, w)}")
    stack = np.concatenate([background_score(cams, alpha)[None], cams])
    refined = crf_inference(image, stack, crf)
    out = {0: refined[0]}
    for i, k in enumerate(keys):
        out[k + 1] = refined[i + 1]
    return out


def _work(job):
    voc_root, cam_dir, la_dir, ha_dir, image_id, cfg = job
    # images only (labels are not needed); the classes: the CAM keys' range
    voc = VOCDataset(voc_root, label_source="mask", classes=cfg.classes)
    # at the CAMs' size: make-cam keeps a large image's CAMs at its working size
    cam, image = load_cam_and_image(voc, Path(cam_dir) / f"{image_id}.npy", image_id)
    save_score_dict(
        Path(la_dir) / f"{image_id}.npy", crf_with_alpha(image, cam, cfg.alpha_low, cfg.crf)
    )
    save_score_dict(
        Path(ha_dir) / f"{image_id}.npy", crf_with_alpha(image, cam, cfg.alpha_high, cfg.crf)
    )
    return image_id


def make_aff_labels(
    voc_root: str | os.PathLike,
    ids: Sequence[str],
    cam_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: AffLabelsConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write OUT_DIR/la/<id>.npy and OUT_DIR/ha/<id>.npy for every id; returns OUT_DIR.

    Images whose two files exist are skipped (resume); a missing CAM file raises
    FileNotFoundError naming it.
    """
    cfg = config or AffLabelsConfig()
    voc = VOCDataset(voc_root, label_source="mask", classes=cfg.classes)
    voc.check_ids(ids)
    cam_dir, out_dir = Path(cam_dir), Path(out_dir)
    require_cams(cam_dir, ids)
    la_dir, ha_dir = out_dir / "la", out_dir / "ha"
    la_dir.mkdir(parents=True, exist_ok=True)
    ha_dir.mkdir(parents=True, exist_ok=True)
    record_config(out_dir, "make-aff-labels", cfg, check=not overwrite)
    todo = dist.shard(pending(ids, [la_dir / "{}.npy", ha_dir / "{}.npy"], overwrite))
    jobs = [(str(voc_root), str(cam_dir), str(la_dir), str(ha_dir), i, cfg) for i in todo]
    bar = tqdm(
        total=len(ids), initial=len(ids) - len(todo), desc="make-aff-labels", disable=not progress
    )
    if cfg.num_workers > 1 and len(jobs) > 1:
        with get_context("spawn").Pool(cfg.num_workers, die_with_parent) as pool:
            for _ in pool.imap_unordered(_work, jobs, chunksize=4):
                bar.update()
    else:
        for job in jobs:
            _work(job)
            bar.update()
    bar.close()
    return out_dir
