"""The files affext writes and reads, below every layer that writes them (data/, models/,
stages/): atomic writes, JSON, psa's per-image score files, and the check that a stage's
input files are all there. The config records and the resume rules beside them are
affext.records'."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .safe_load import load_npy_dict


def atomic_save(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """Write a file through a temporary name in the same folder, then os.replace it.

    An interrupted run thus leaves either the complete old file, the complete new one, or a
    stray temporary (".tmp" suffix, never read as an output). The file gets the permissions a
    plain open() would give it (mkstemp's temporaries are private to the owner).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_umask() -> int:
    mask = os.umask(0)  # os.umask only reads by setting: done once, before any worker thread
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n"
    atomic_save(path, lambda f: f.write(text.encode()))


def json_default(obj: Any) -> Any:
    """JSON for the values configs and records hold: paths, numpy numbers and arrays,
    devices."""
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


# -- per-image score files (psa's dict .npy) ---------------------------------------------
def save_score_dict(path: str | os.PathLike, scores: dict[int, np.ndarray]) -> None:
    """psa's per-image .npy: a pickled dict {class_index: (H, W) float32 map}."""
    table = {int(k): np.asarray(v, np.float32) for k, v in scores.items()}
    atomic_save(path, lambda f: np.save(f, table, allow_pickle=True))


def load_score_dict(path: str | os.PathLike, what: str = "CAM") -> dict[int, np.ndarray]:
    """A per-image score file written by save_score_dict (or psa); errors name the file.

    Read by safe_load.load_npy_dict: a dict of numeric arrays, nothing that runs code
    (UnsafeFileError otherwise); FileNotFoundError when missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"missing {what} file {str(path)!r}: run the stage that makes it for this image first"
        )
    # The restricted reader (safe_load): psa's format without letting a file run code.
    return load_npy_dict(path, what)


# -- per-image file sets -------------------------------------------------------------------
def missing_files(ids: Iterable[str], templates: Iterable[str | os.PathLike]) -> list[str]:
    """The ids whose files are not all there; templates: paths with "{}" for the image id,
    e.g. "work/cam/{}.npy"."""
    templates = [os.fspath(t) for t in templates]
    return [i for i in ids if not all(os.path.isfile(t.format(i)) for t in templates)]


def require_files(
    ids: Iterable[str],
    templates: Iterable[str | os.PathLike],
    what: str,
    remedy: str,
    error: type[Exception] = FileNotFoundError,
) -> None:
    """Raise `error` naming the ids that lack any of the files `templates` give (see
    missing_files): "missing <what> for N image(s) in <folder>, e.g. [...]: <remedy>"."""
    templates = [os.fspath(t) for t in templates]
    missing = missing_files(ids, templates)
    if missing:
        folder = os.path.commonpath([os.path.dirname(t) for t in templates])
        raise error(
            f"missing {what} for {len(missing)} image(s) in {folder!r}, e.g. {missing[:3]}: "
            f"{remedy}"
        )


# The config records' names, in affext.records since 0.2.0, still found here.
_MOVED = (
    "CONFIG_SUFFIX",
    "NON_OUTPUT_SETTINGS",
    "UNRECORDED_SETTINGS",
    "ConfigChangedError",
    "check_config",
    "config_changes",
    "record_config",
    "versions",
)


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        from . import records

        return getattr(records, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
