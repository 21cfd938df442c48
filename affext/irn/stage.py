"""`affext irn make-sem-seg-labels`: IRN's step/make_sem_seg_labels.py with the O(N) walk.

For each image: IRN's boundary map from the image and its flip (`IRNEdgeNet.boundary`), the
walk of IRN's stride-4 CAMs over it (`propagate_to_edge`), bilinear upsampling x4 cropped to
the image, division by the largest score, a constant background score in front
(sem_seg_bg_thres), argmax, IRN's class indices (key + 1), written as IRN's grey label PNG.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.transforms import normalize
from ..data.voc import VOCDataset
from ..stages.runner import CamImages, ImageStage
from .files import STRIDE, cam_path, load_cam_file, save_label, strided_size
from .network import CROP_SIZE, IRNEdgeNet, load_irn_weights
from .walk import propagate_to_edge


@dataclass
class IrnSemSegConfig:
    """IRN's run_sample.py defaults for the semantic-label step."""

    beta: float = 10.0
    exp_times: int = 8
    sem_seg_bg_thres: float = 0.25
    radius: int = 5
    crop_size: int = CROP_SIZE
    num_workers: int = max(0, (os.cpu_count() or 1) // 2)
    device: str = "auto"


class _Images(CamImages):
    """Items: (id, normalised image (3, H, W), CAM classes (C,), stride-4 CAMs (C, h, w))."""

    def item(self, image_id: str):
        rgb = np.asarray(self.voc.load_pil(image_id))
        path = cam_path(self.cam_dir, image_id)
        cams = load_cam_file(path)
        expected = strided_size(*rgb.shape[:2])
        if tuple(cams.cam.shape[1:]) != expected:
            raise ValueError(
                f"CAM file {str(path)!r} holds {tuple(cams.cam.shape[1:])} maps, but image "
                f"{image_id!r} ({rgb.shape[0]}x{rgb.shape[1]}) needs stride-{STRIDE} maps of "
                f"{expected}: the CAMs come from another image or another stride"
            )
        return image_id, torch.from_numpy(normalize(rgb)), cams.keys, cams.cam


def _require_cams(cam_dir: Path, ids: Sequence[str]) -> None:
    """Raise FileNotFoundError naming the first of `ids` without its IRN CAM file."""
    missing = [cam_path(cam_dir, i) for i in ids if not cam_path(cam_dir, i).is_file()]
    if missing:
        raise FileNotFoundError(
            f"missing CAM file {str(missing[0])!r}"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            + ": run IRN's make_cam step for these images first"
        )


def semantic_label(
    cam: torch.Tensor,
    keys: np.ndarray,
    edge: torch.Tensor,
    image_size: tuple[int, int],
    config: IrnSemSegConfig | None = None,
) -> np.ndarray:
    """IRN's label of one image from its stride-4 CAMs (C, h, w) of classes `keys` (0..19)
    and its boundary map (h, w): (H, W) uint8, 0 background, key + 1 for a class."""
    cfg = config or IrnSemSegConfig()
    height, width = image_size
    if cam.shape[0] == 0:  # no class: IRN's code fails here; every pixel is background
        return np.zeros((height, width), np.uint8)
    walked = propagate_to_edge(cam, edge, radius=cfg.radius, beta=cfg.beta, exp_times=cfg.exp_times)
    scores = F.interpolate(walked, scale_factor=STRIDE, mode="bilinear", align_corners=False)
    scores = scores[:, 0, :height, :width]
    peak = scores.max()
    if peak > 0:  # all-zero CAMs: IRN divides by zero; leave the scores at 0 (background)
        scores = scores / peak
    scores = F.pad(scores, (0, 0, 0, 0, 1, 0), value=cfg.sem_seg_bg_thres)
    classes = np.concatenate([[0], np.asarray(keys, np.int64) + 1]).astype(np.uint8)
    return classes[scores.argmax(dim=0).cpu().numpy()]


def make_sem_seg_labels(
    voc12_root: str | os.PathLike,
    ids: Sequence[str],
    cam_out_dir: str | os.PathLike,
    irn_weights_name: str | os.PathLike,
    sem_seg_out_dir: str | os.PathLike,
    config: IrnSemSegConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write SEM_SEG_OUT_DIR/<id>.png for every id from IRN's CAMs and res50_irn.pth.

    Labels already written are kept (the step resumes) unless overwrite; each file appears
    whole or not at all. Raises FileNotFoundError naming missing CAM or weights files and
    ValueError for CAMs whose size does not match their image.
    """
    cfg = config or IrnSemSegConfig()
    voc = VOCDataset(voc12_root, label_source="mask")
    cam_dir = Path(cam_out_dir)
    run = ImageStage(
        "irn-make-sem-seg-labels",
        cfg,
        voc,
        ids,
        sem_seg_out_dir,
        ["{}.png"],
        inputs=functools.partial(_require_cams, cam_dir),
        desc="irn sem-seg",
    )
    device, out_dir = run.device, run.out_dir
    model = IRNEdgeNet(cfg.crop_size)
    load_irn_weights(model, irn_weights_name)
    model.to(device).eval()
    todo = run.start(overwrite, shard=False, check=False)
    loader = run.loader(_Images(voc, todo, cam_dir), batch_size=None)
    bar = run.bar(progress)
    with torch.no_grad():
        for image_id, image, keys, cam in loader:
            edge = model.boundary(image.to(device))
            if bool(edge.isnan().any()):
                raise ValueError(
                    f"the boundary map of {image_id!r} holds NaN: check the weights file "
                    f"{os.fspath(irn_weights_name)!r}"
                )
            label = semantic_label(cam.to(device), keys, edge, tuple(image.shape[-2:]), cfg)
            save_label(out_dir / f"{image_id}.png", label)
            bar.update()
    bar.close()
    return out_dir
