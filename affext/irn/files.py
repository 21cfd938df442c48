"""IRN's per-image files: CAMs (step/make_cam.py's .npy) and semantic label PNGs.

CAM file <cam_out_dir>/<id>.npy: a pickled dict {"keys": the image's classes 0..19 (IRN
writes a torch int64 tensor), "cam": (C, ceil(H/4), ceil(W/4)) stride-4 CAMs of those classes
(a torch float32 tensor), "high_res": (C, H, W) float32 numpy CAMs}, each map divided by its
max. Label file <sem_seg_out_dir>/<id>.png: an (H, W) uint8 grey PNG of class indices
(0 background, 1..20 the VOC classes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# The one place this package takes affext's atomic writer from.
from ..files import atomic_save
from ..safe_load import load_npy_dict

STRIDE = 4


def strided_size(height: int, width: int, stride: int = STRIDE) -> tuple[int, int]:
    """The map size IRN's networks give for an H x W image: ceil(H / stride), ceil(W / stride)."""
    return (height - 1) // stride + 1, (width - 1) // stride + 1


@dataclass
class CamFile:
    """One IRN CAM file: keys (C,) int64 classes 0..19, cam (C, h, w) float32 tensor,
    high_res (C, H, W) float32 array or None."""

    keys: np.ndarray
    cam: torch.Tensor
    high_res: np.ndarray | None = None


def cam_path(cam_dir: str | os.PathLike, image_id: str) -> Path:
    return Path(cam_dir) / f"{image_id}.npy"


def save_cam_file(
    path: str | os.PathLike,
    keys,
    cam,
    high_res=None,
) -> None:
    """Write a CAM file in IRN's format (the types IRN's make_cam.py writes), atomically."""
    keys = torch.as_tensor(np.asarray(keys, np.int64))
    cam = torch.as_tensor(np.asarray(cam, np.float32))
    if cam.dim() != 3 or cam.shape[0] != keys.numel():
        raise ValueError(
            f"cam must have shape (C, h, w) with C = len(keys) = {keys.numel()}, "
            f"got {tuple(cam.shape)}"
        )
    record = {"keys": keys, "cam": cam}
    if high_res is not None:
        record["high_res"] = np.asarray(high_res, np.float32)
    atomic_save(path, lambda f: np.save(f, record, allow_pickle=True))


def load_cam_file(path: str | os.PathLike) -> CamFile:
    """Read an IRN CAM file (keys and cam as torch tensors or numpy arrays).

    Raises FileNotFoundError (missing file), UnsafeFileError (anything but IRN's dict of
    tensors and numeric arrays: nothing in the file runs) or ValueError (unreadable, not
    IRN's keys, or keys and cam that disagree), naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"missing CAM file {str(path)!r}: run IRN's make_cam step (or the tool that "
            "writes IRN's CAMs) for this image first"
        )
    # IRN's dict holds torch tensors: the restricted reader rebuilds those too (safe_load).
    record = load_npy_dict(path, "CAM", tensors=True)
    if not {"keys", "cam"} <= set(record):
        raise ValueError(
            f"CAM file {str(path)!r} is not IRN's {{'keys', 'cam', 'high_res'}} dict "
            f"(it holds keys {sorted(map(str, record))})"
        )
    keys = np.asarray(torch.as_tensor(record["keys"]).cpu(), np.int64).reshape(-1)
    cam = torch.as_tensor(record["cam"]).detach().cpu().float()
    if cam.dim() != 3 or cam.shape[0] != keys.size:
        raise ValueError(
            f"CAM file {str(path)!r}: 'cam' must have shape (C, h, w) with C = len(keys) = "
            f"{keys.size}, got {tuple(cam.shape)}"
        )
    if keys.size and (keys.min() < 0 or keys.max() > 19):
        raise ValueError(f"CAM file {str(path)!r}: 'keys' must be classes 0..19, got {keys}")
    high_res = record.get("high_res")
    return CamFile(keys, cam, None if high_res is None else np.asarray(high_res, np.float32))


def save_label(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write an (H, W) class map as IRN does: a uint8 grey PNG, atomically."""
    image = Image.fromarray(np.asarray(label, np.uint8), mode="L")
    atomic_save(path, lambda f: image.save(f, format="PNG"))
