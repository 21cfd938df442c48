"""What every stage shares: atomic writes, config records, devices, the per-image CAM files."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

CONFIG_SUFFIX = ".config.json"


def atomic_save(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """Write a file through a temporary name in the same folder, then os.replace it.

    An interrupted run thus leaves either the complete old file, the complete new one, or a
    stray temporary (".tmp" suffix, never read as an output).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    atomic_save(path, lambda f: f.write(text.encode()))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.device):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def versions() -> dict[str, str]:
    """Versions of what produced an output, recorded next to it."""
    import PIL

    from .. import __version__

    out = {
        "affext": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    try:
        from importlib.metadata import version

        out["pydensecrf"] = version("pydensecrf2")
    except Exception:  # not installed under that distribution name
        pass
    return out


def record_config(
    out_dir: str | os.PathLike, stage: str, config: Any, extra: dict | None = None
) -> Path:
    """Write OUT_DIR/<stage>.config.json: the stage's config dataclass and the versions."""
    record = {
        "stage": stage,
        "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config),
        "versions": versions(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if extra:
        record.update(extra)
    path = Path(out_dir) / f"{stage}{CONFIG_SUFFIX}"
    atomic_write_json(path, record)
    return path


def resolve_device(device: str | torch.device | None) -> torch.device:
    """ "auto"/None -> cuda when available, else cpu; a clear error for an unusable device."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} was asked for but CUDA is not available here; use --device cpu"
        )
    return dev


def default_workers() -> int:
    """DataLoader workers for image decoding: up to 4, fewer on small machines."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def require_cams(cam_dir: Path, ids: Iterable[str]) -> None:
    """Raise FileNotFoundError naming the ids that have no CAM file CAM_DIR/<id>.npy."""
    missing = [i for i in ids if not (Path(cam_dir) / f"{i}.npy").is_file()]
    if missing:
        raise FileNotFoundError(
            f"missing CAMs for {len(missing)} image(s) in {str(cam_dir)!r}, "
            f"e.g. {missing[:3]}: run make-cam on them first"
        )


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def pending(
    ids: Iterable[str], templates: Iterable[str | os.PathLike], overwrite: bool = False
) -> list[str]:
    """The ids whose outputs are not all there yet (per-image stages skip finished ones).

    templates: output paths with "{}" for the image id, e.g. "work/cam/{}.npy".
    """
    ids = list(ids)
    if overwrite:
        return ids
    templates = [str(t) for t in templates]
    return [i for i in ids if not all(os.path.isfile(t.format(i)) for t in templates)]


# -- per-image score files (psa's dict .npy) ---------------------------------------------
def save_score_dict(path: str | os.PathLike, scores: dict[int, np.ndarray]) -> None:
    """psa's per-image .npy: a pickled dict {class_index: (H, W) float32 map}."""
    table = {int(k): np.asarray(v, np.float32) for k, v in scores.items()}
    atomic_save(path, lambda f: np.save(f, table, allow_pickle=True))


def load_score_dict(path: str | os.PathLike, what: str = "CAM") -> dict[int, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"missing {what} file {str(path)!r}: run the stage that makes it for this image first"
        )
    try:
        table = np.load(path, allow_pickle=True).item()
    except Exception as exc:
        raise ValueError(f"cannot read {what} file {str(path)!r}: {exc}") from exc
    if not isinstance(table, dict):
        raise ValueError(f"{what} file {str(path)!r} does not hold a {{class: map}} dict")
    return table


def cam_stack(cam: dict[int, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """(20, H, W) float32 array from psa's CAM dict {class_index 0..19: (H, W)}."""
    out = np.zeros((20,) + tuple(shape), np.float32)
    for k, v in cam.items():
        out[int(k)] = v
    return out


def background_score(cams: np.ndarray, alpha: float) -> np.ndarray:
    """M_bg = (1 - max_c M_c) ** alpha (method.md section 1); cams (C, H, W), C may be 0."""
    peak = cams.max(axis=0) if len(cams) else np.zeros(cams.shape[1:], np.float32)
    return np.power(np.clip(1.0 - peak, 0.0, 1.0), alpha).astype(np.float32)


class StageTimer:
    """Wall time of a stage, for metrics.json."""

    def __init__(self):
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
