"""A stage's config record (OUT_DIR/<stage>.config.json: its settings and the versions that
made its outputs) and the resume rules read from it: which settings change what a stage
writes (a changed one refuses a resume, ConfigChangedError) and which only how fast it runs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import AffextError
from .files import atomic_write_json, json_default

CONFIG_SUFFIX = ".config.json"


def versions() -> dict[str, str]:
    """Versions of what produced an output, recorded next to it (the pipeline's optional
    libraries where they are installed)."""
    from importlib.metadata import PackageNotFoundError, version

    from ._version import __version__

    out = {
        "affext": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    for key, dist in (("pillow", "pillow"), ("pydensecrf", "pydensecrf2")):
        with contextlib.suppress(PackageNotFoundError):
            out[key] = version(dist)
    return out


# Settings that change how fast a stage runs, or where, but not what it writes: a recorded
# config that differs from the one asked for only in these does not block a resume
# (check_config). Anything else (a learning rate, alpha, the CRF's parameters, the backbone,
# weights, a batch size) counts as a change. A name matches at any depth; a dotted one only
# there: "crf.backend", the dense CRF's implementation (affext's or pydensecrf, which agree to
# a few 1e-6 in the marginals: a speed setting, as `device` is).
NON_OUTPUT_SETTINGS = ("device", "num_workers", "crf_workers", "progress", "crf.backend")
# A consent rather than a setting, left out of the records (at any depth): "from_scratch", the
# training stages' leave to start an ImageNet backbone without weights (`weights`, recorded,
# says what a network started from).
UNRECORDED_SETTINGS = ("from_scratch",)


class ConfigChangedError(AffextError, ValueError):
    """A stage's outputs were made with other settings than the ones asked for now."""


def record_config(
    out_dir: str | os.PathLike,
    stage: str,
    config: Any,
    extra: dict | None = None,
    check: bool = False,
) -> Path:
    """Write OUT_DIR/<stage>.config.json: the stage's config dataclass and the versions.

    check: first refuse (check_config) when the record there holds other settings, i.e.
    when the outputs beside it were made with them. Under torchrun only rank 0 writes (every
    rank checks and gets the path).
    """
    from . import dist

    if check:
        check_config(out_dir, stage, config)
    path = Path(out_dir) / f"{stage}{CONFIG_SUFFIX}"
    if not dist.is_main():
        return path
    record = {
        "stage": stage,
        "config": _plain(config),
        "versions": versions(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if extra:
        record.update(extra)
    atomic_write_json(path, record)
    return path


def _plain(config: Any) -> dict:
    """A config dataclass (or dict) as JSON gives it back (tuples as lists), as recorded."""
    obj = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return _recorded(json.loads(json.dumps(obj, default=json_default)))


def _recorded(obj: Any) -> Any:
    """obj without the UNRECORDED_SETTINGS of its mappings, at any depth."""
    if isinstance(obj, dict):
        return {k: _recorded(v) for k, v in obj.items() if k not in UNRECORDED_SETTINGS}
    return obj


def config_changes(
    out_dir: str | os.PathLike, stage: str, config: Any
) -> dict[str, tuple[Any, Any]]:
    """The settings whose value in OUT_DIR/<stage>.config.json (the outputs there were made
    with it) differs from `config`'s: {"name" or "group.name": (old, new)}. Settings of
    NON_OUTPUT_SETTINGS are left out; no record: no change."""
    path = Path(out_dir) / f"{stage}{CONFIG_SUFFIX}"
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"cannot read the config record {str(path)!r} ({exc}): delete it, or the folder"
        ) from exc
    return _diff(old, _plain(config))


def _diff(old: Any, new: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = {}
        for k in dict.fromkeys([*old, *new]):
            if k in NON_OUTPUT_SETTINGS or f"{prefix}{k}" in NON_OUTPUT_SETTINGS:
                continue
            out.update(_diff(old.get(k), new.get(k), f"{prefix}{k}."))
        return out
    return {} if old == new else {prefix[:-1]: (old, new)}


def check_config(out_dir: str | os.PathLike, stage: str, config: Any) -> None:
    """Raise ConfigChangedError when OUT_DIR holds `stage` outputs made with other settings
    than `config`'s (see config_changes): reusing them would silently keep the old results.
    The message names each setting (old -> new) and the way out."""
    changes = config_changes(out_dir, stage, config)
    if changes:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
        raise ConfigChangedError(
            f"{stage}: the outputs in {str(out_dir)!r} were made with other settings ({listed}); "
            "pass --overwrite to redo this stage and the ones after it, or use another "
            "output folder (work directory)"
        )
