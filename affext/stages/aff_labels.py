"""Stage `make-aff-labels`: la / ha dCRF score maps from the CAMs (docs/method.md §2).

For each image: [M_bg; M_c for the present classes] with M_bg = (1 - max_c M_c) ** alpha, for
alpha_low ("la") and alpha_high ("ha"), refined by the dense CRF on the RGB image. Saved as
psa does: OUT/la/<id>.npy and OUT/ha/<id>.npy, dicts {0: background, c + 1: class c}.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.datasets import load_cam_and_image
from ..data.voc import VOCDataset
from ..files import save_score_dict
from .cams import background_score, require_cams
from .common import default_workers
from .crf import CRFConfig, CRFPool, crf_inference, default_crf_workers, require_backend
from .runner import CamImages, ImageStage


@dataclass
class AffLabelsConfig:
    alpha_low: float = 4.0  # psa --low_alpha
    alpha_high: float = 32.0  # psa --high_alpha (16/24 in the paper)
    crf: CRFConfig = field(default_factory=CRFConfig)
    num_workers: int = default_workers()  # DataLoader workers reading CAMs and images
    crf_workers: int = default_crf_workers()  # pydensecrf processes; 0: in this process
    device: str = "auto"  # where the affext dCRF runs
    classes: str | None = None  # classes file ("voc": VOC's 20); None: the dataset's


def crf_with_alphas(
    image: np.ndarray,
    cam: dict[int, np.ndarray],
    alphas: Sequence[float],
    crf: CRFConfig | None = None,
    device: torch.device | str | None = None,
) -> list[dict[int, np.ndarray]]:
    """psa's _crf_with_alpha for each alpha: the dCRF of [M_bg(alpha); M_c present], all
    stacks in one call (the image's lattices are built once), on `device` (None: the CPU).
    image (H, W, 3) uint8, cam {c: (H, W)}; returns per alpha {0: bg, c + 1: M_c}."""
    keys = sorted(int(k) for k in cam)
    h, w = image.shape[:2]
    cams = (
        np.stack([np.asarray(cam[k], np.float32) for k in keys])
        if keys
        else np.zeros((0, h, w), np.float32)
    )
    if cams.shape[1:] != (h, w):
        raise ValueError(f"CAM maps are {cams.shape[1:]} but the image is {(h, w)}")
    stacks = np.stack([np.concatenate([background_score(cams, a)[None], cams]) for a in alphas])
    if device is not None and torch.device(device).type != "cpu":
        refined = crf_inference(image, torch.from_numpy(stacks).to(device), crf).cpu().numpy()
    else:
        refined = crf_inference(image, stacks, crf)
    out = []
    for stack in refined:
        scores = {0: stack[0]}
        for i, k in enumerate(keys):
            scores[k + 1] = stack[i + 1]
        out.append(scores)
    return out


def crf_with_alpha(
    image: np.ndarray, cam: dict[int, np.ndarray], alpha: float, crf: CRFConfig | None = None
) -> dict[int, np.ndarray]:
    """psa's _crf_with_alpha: dCRF of [M_bg(alpha); M_c present]; returns {0: bg, c + 1: M_c}."""
    return crf_with_alphas(image, cam, (alpha,), crf)[0]


class _CamImages(CamImages):
    """Items: (id, RGB (h, w, 3) uint8 at the CAMs' size, psa's CAM dict)."""

    def item(self, image_id: str):
        # at the CAMs' size: make-cam keeps a large image's CAMs at its working size
        cam, image = load_cam_and_image(self.voc, self.cam_dir / f"{image_id}.npy", image_id)
        return image_id, image, cam


def _as_is(item):
    return item


def _write_labels(
    la_path: Path,
    ha_path: Path,
    image: np.ndarray,
    cam: dict[int, np.ndarray],
    cfg: AffLabelsConfig,
    device: torch.device | None,
) -> None:
    la, ha = crf_with_alphas(image, cam, (cfg.alpha_low, cfg.alpha_high), cfg.crf, device)
    save_score_dict(la_path, la)
    save_score_dict(ha_path, ha)


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
    FileNotFoundError naming it. The dCRF runs with cfg.crf.backend: affext's on cfg.device
    in this process (la and ha of an image in one call), or pydensecrf in cfg.crf_workers
    processes (CRFPool).
    """
    cfg = config or AffLabelsConfig()
    require_backend(cfg.crf)
    # images only (labels are not needed); the classes: the CAM keys' range
    voc = VOCDataset(voc_root, label_source="mask", classes=cfg.classes)
    cam_dir = Path(cam_dir)
    run = ImageStage(
        "make-aff-labels",
        cfg,
        voc,
        ids,
        out_dir,
        ["la/{}.npy", "ha/{}.npy"],
        inputs=functools.partial(require_cams, cam_dir),
    )
    device, out_dir = run.device, run.out_dir
    la_dir, ha_dir = out_dir / "la", out_dir / "ha"
    todo = run.start(overwrite)
    bar = run.bar(progress)
    # the processes (pydensecrf only) before the loader's
    pool = CRFPool(cfg.crf, cfg.crf_workers if len(todo) > 1 else 0, on_done=lambda _: bar.update())
    loader = run.loader(_CamImages(voc, todo, cam_dir), batch_size=None, collate_fn=_as_is)
    on = device if cfg.crf.backend == "affext" else None  # pydensecrf: numpy on the host
    failed = True
    try:
        for image_id, image, cam in loader:
            paths = la_dir / f"{image_id}.npy", ha_dir / f"{image_id}.npy"
            pool.submit(_write_labels, *paths, image, cam, cfg, on)
        failed = False
    finally:
        try:
            pool.close(cancel=failed)
        finally:
            bar.close()
    return out_dir
