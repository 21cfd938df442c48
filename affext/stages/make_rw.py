"""Stage `make-rw`: random walk of the CAMs with AffinityNet's affinities (method.md section 5).

OUT/rw/<id>.png: the pseudo label (VOC palette); OUT/rw_crf/<id>.png: the same scores refined
by the dense CRF (section 2's settings) over the background and the image's classes.
Images whose padded sizes are equal are walked together in one batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data.transforms import long_side_size, normalize, resize_maps, to_long_side
from ..data.voc import VOCDataset, save_label_png
from .common import (
    background_score,
    cam_stack,
    default_workers,
    load_score_dict,
    pending,
    record_config,
    require_cams,
    resolve_device,
)
from .crf import CRFConfig, crf_inference
from .train_aff import load_aff_net

STRIDE = 8


@dataclass
class MakeRwConfig:
    """psa infer_aff defaults: alpha 16, beta 8, logt 8 (t = 256)."""

    backbone: str = "resnet38"
    alpha: float = 16.0
    beta: float = 8.0
    iterations: int = 256
    radius: int = 5
    region: str = "psa"
    batch_size: int = 8
    crf: CRFConfig = field(default_factory=CRFConfig)
    write_crf: bool = True
    long_side: int | None = None  # working size: long side resized to this (None: as is)
    num_workers: int = default_workers()
    device: str = "auto"


def padded(n: int) -> int:
    return -(-n // STRIDE) * STRIDE


class _RwDataset(Dataset):
    """Items: (id, image (3, Hp, Wp) zero-padded, cams (21, Hp/8, Wp/8), working (h, w),
    present classes, original RGB (H, W, 3))."""

    def __init__(
        self,
        voc: VOCDataset,
        ids: Sequence[str],
        cam_dir: Path,
        alpha: float,
        long_side: int | None = None,
    ):
        self.voc, self.ids, self.cam_dir, self.alpha = voc, list(ids), cam_dir, alpha
        self.long_side = long_side

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        pil = self.voc.load_pil(image_id)
        rgb = np.asarray(pil)
        cam = load_score_dict(self.cam_dir / f"{image_id}.npy", "CAM")
        for k, v in cam.items():
            if np.shape(v) != rgb.shape[:2]:
                raise ValueError(
                    f"CAM of {image_id!r} class {k} is {np.shape(v)} but the image "
                    f"is {rgb.shape[:2]}: the CAMs come from another dataset"
                )
        work = np.asarray(to_long_side(pil, self.long_side))
        h, w = work.shape[:2]
        fg = resize_maps(cam_stack(cam, rgb.shape[:2]), (h, w))
        # method.md section 5: [M_bg (alpha); M_1..M_20], zero-padded, pooled by 8
        scores = np.concatenate([background_score(fg, self.alpha)[None], fg])
        hp, wp = padded(h), padded(w)
        x = np.zeros((3, hp, wp), np.float32)
        x[:, :h, :w] = normalize(work)
        full = np.zeros((21, hp, wp), np.float32)
        full[:, :h, :w] = scores
        pooled = full.reshape(21, hp // STRIDE, STRIDE, wp // STRIDE, STRIDE).mean(axis=(2, 4))
        present = sorted(int(k) + 1 for k in cam)
        return image_id, torch.from_numpy(x), torch.from_numpy(pooled), (h, w), present, rgb


def _collate(items):
    ids, xs, cams, sizes, present, rgbs = zip(*items)
    return list(ids), torch.stack(xs), torch.stack(cams), list(sizes), list(present), list(rgbs)


def _size_batches(
    voc: VOCDataset, ids: Sequence[str], batch_size: int, long_side: int | None
) -> list[list[int]]:
    """Index batches of images with the same padded working size (from the file headers)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for n, image_id in enumerate(ids):
        with Image.open(voc.image_path(image_id)) as im:
            w, h = long_side_size(im.size, long_side)
        groups.setdefault((padded(h), padded(w)), []).append(n)
    batches = []
    for members in groups.values():
        batches += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    return sorted(batches, key=lambda b: b[0])


def rw_crf_label(
    rgb: np.ndarray, scores: np.ndarray, present: Sequence[int], crf: CRFConfig | None = None
) -> np.ndarray:
    """dCRF of the walked scores over [bg; present classes], normalised per pixel; (H, W)."""
    keys = [0] + list(present)
    sub = np.maximum(scores[keys], 0.0)
    sub = sub / np.maximum(sub.sum(axis=0, keepdims=True), 1e-5)
    refined = crf_inference(rgb, sub, crf)
    return np.asarray(keys, np.uint8)[np.argmax(refined, axis=0)]


def make_rw(
    voc_root: str | os.PathLike,
    ids: Sequence[str],
    cam_dir: str | os.PathLike,
    aff_net_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: MakeRwConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write OUT_DIR/rw/<id>.png (and rw_crf/) for every id; existing ones are kept."""
    from .. import random_walk

    cfg = config or MakeRwConfig()
    device = resolve_device(cfg.device)
    voc = VOCDataset(voc_root, label_source="mask")
    voc.check_ids(ids)
    cam_dir, out_dir = Path(cam_dir), Path(out_dir)
    require_cams(cam_dir, ids)
    rw_dir, crf_dir = out_dir / "rw", out_dir / "rw_crf"
    rw_dir.mkdir(parents=True, exist_ok=True)
    outputs = [rw_dir / "{}.png"]
    if cfg.write_crf:
        crf_dir.mkdir(parents=True, exist_ok=True)
        outputs.append(crf_dir / "{}.png")
    model = load_aff_net(aff_net_dir, cfg.backbone, device)
    record_config(out_dir, "make-rw", cfg)
    todo = pending(ids, outputs, overwrite)
    dataset = _RwDataset(voc, todo, cam_dir, cfg.alpha, cfg.long_side)
    loader = DataLoader(
        dataset,
        batch_sampler=_size_batches(voc, todo, cfg.batch_size, cfg.long_side),
        collate_fn=_collate,
        num_workers=cfg.num_workers if len(todo) > 1 else 0,
    )
    bar = tqdm(total=len(ids), initial=len(ids) - len(todo), desc="make-rw", disable=not progress)
    with torch.no_grad():
        for batch_ids, x, cams, sizes, present, rgbs in loader:
            x, cams = x.to(device), cams.to(device)
            aff = model.affinity(x, cfg.radius)
            if aff.shape[-2:] != cams.shape[-2:]:
                raise ValueError(
                    f"AffinityNet gives a {tuple(aff.shape[-2:])} map for a "
                    f"{tuple(x.shape[-2:])} image; the stride must be {STRIDE}"
                )
            walked = random_walk(
                cams,
                aff.to(cams.dtype),
                beta=cfg.beta,
                iterations=cfg.iterations,
                radius=cfg.radius,
                region=cfg.region,
            )
            # method.md section 5: upsample to the padded size, crop to the image
            walked = F.interpolate(walked, size=x.shape[-2:], mode="bilinear", align_corners=False)
            for j, image_id in enumerate(batch_ids):
                h, w = sizes[j]
                scores = walked[j : j + 1, :, :h, :w]
                full = rgbs[j].shape[:2]
                if (h, w) != full:  # a reduced working size: back to the original
                    scores = F.interpolate(scores, size=full, mode="bilinear", align_corners=False)
                scores = scores[0].cpu()
                if cfg.write_crf:
                    save_label_png(
                        crf_dir / f"{image_id}.png",
                        rw_crf_label(rgbs[j], scores.numpy(), present[j], cfg.crf),
                    )
                save_label_png(
                    rw_dir / f"{image_id}.png", scores.argmax(dim=0).to(torch.uint8).numpy()
                )
                bar.update()
    bar.close()
    return out_dir
