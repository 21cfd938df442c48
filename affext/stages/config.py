"""Stage configs in one place: the backbones' presets, and the one rule that merges psa's
defaults, a preset, the settings every stage shares and a caller's overrides (the CLI and
`affext run` both build their configs here)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import default_workers
from .registry import STAGES

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
        # 6 epochs: on the embedded set they gave a better walk than 8 (random walk / + dCRF
        # mIoU 78.7 / 87.1 against 77.8 / 85.2, on a 2-core AMD EPYC) in 3/4 of the time.
        "train_aff": {
            "epochs": 6,
            "batch_size": 8,
            "crop_size": 256,
            "long_side": 320,
            "optimizer": "adam",
            "lr": 0.003,
        },
        "make_rw": {"long_side": 320},
        # The segmentation network as AffinityNet: 256 px crops of the 320 px working size,
        # AdamW, no dropout or hue jitter. Its backbone starts from the run's classifier, as
        # psa's starts from an ImageNet classifier (tiny has none). The ASPP head half as wide
        # as tiny's feature (64): on the embedded set, from the same pseudo labels, it scored
        # higher than a 128-wide head at less cost (segmentation mIoU 81.9 in 8 epochs, 83.0
        # in 10, against 76.0 in 7); its rates DeepLab v3's share of the crop's map (6, 12, 18
        # cells of 32, as DeepLab's on 33); 8 epochs, what the time budget allows; DeepLab
        # v2's inference scales (0.5, 0.75, 1) of the working size.
        "train_seg": {
            "epochs": 8,
            "init_from": "train-cam",
            "batch_size": 8,
            "crop_size": 256,
            "long_side": 320,
            "optimizer": "adam",
            "lr": 0.003,
            "dropout": 0.0,
            "jitter": (0.3, 0.3, 0.3, 0.0),
            "channels": 64,
            "rates": (6, 12, 18),
        },
        "make_seg": {"long_side": 320, "scales": (0.5, 0.75, 1.0)},
    },
    # MS-COCO 2014 (`--preset coco`, over the backbone's own; for resnet38 / resnet50): the
    # settings the IRN-based works publish for COCO (IRN's COCO code was never released;
    # ReCAM, AMN and RIB publish theirs, and agree), psa's for everything they do not state
    # (docs/method.md §9 cites each). The classifier: 5 epochs of batch 16, 512 px crops of
    # images resized to a long side of 320-640 px, lr 0.1, weight decay 1e-4 (CAM inference
    # at psa's scales, which are theirs too). AffinityNet as their inter-pixel relation
    # network, which learns the same pairs from the CAMs: 3 epochs of batch 32, 512 px
    # crops, lr 0.1, weight decay 1e-4.
    "coco": {
        "train_cam": {
            "epochs": 5,
            "batch_size": 16,
            "crop_size": 512,
            "resize_long": (320, 640),
            "lr": 0.1,
            "weight_decay": 1e-4,
        },
        "train_aff": {
            "epochs": 3,
            "batch_size": 32,
            "crop_size": 512,
            "lr": 0.1,
            "weight_decay": 1e-4,
        },
    },
}

# The settings of a whole run that every stage having the field takes (preset: a named
# preset of PRESETS applied over the backbone's own, e.g. "coco"; no stage has it as a field).
SHARED = (
    "backbone",
    "preset",
    "device",
    "num_workers",
    "seed",
    "label_source",
    "cls_labels",
    "classes",
)

# The stages of `affext run`, in order, by their names in PRESETS and RunConfig: their
# config classes (affext.stages.registry).
STAGE_CONFIGS = {s.name: s.config for s in STAGES}

# The stages that refine with the dense CRF (their configs' `crf`: CRFConfig).
CRF_STAGES = tuple(s.name for s in STAGES if "crf" in s.fields)


def stage_config(cls, stage: str | None, shared: dict | None = None, **overrides):
    """cls's config: psa's defaults, then the preset of shared["backbone"] for `stage`, then
    the named preset shared["preset"] (e.g. "coco") for it, then the `shared` settings cls
    has (SHARED), then `overrides`; None values are left out.

    Raises ValueError naming an unknown preset, or a preset or override key cls does not have.
    """
    shared = {k: v for k, v in (shared or {}).items() if v is not None}
    names = {f.name for f in dataclasses.fields(cls)}
    named = shared.get("preset")
    if named is not None and named not in PRESETS:
        raise ValueError(f"no preset {named!r}; the presets are {sorted(PRESETS)}")
    preset = {}
    if stage:
        preset.update(PRESETS.get(shared.get("backbone"), {}).get(stage, {}))
        preset.update(PRESETS.get(named, {}).get(stage, {}))
    values = {**preset, **{k: v for k, v in shared.items() if k in names}}
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"{stage or cls.__name__} has no setting(s) {sorted(unknown)}")
    return cls(**_typed(cls, values, stage or cls.__name__))


def _typed(cls, values: dict, where: str) -> dict:
    """Values as a config file gives them made cls's types: a dict for a nested config (the
    CRF's) merged over its defaults, a list for a tuple setting made a tuple."""
    out = dict(values)
    for f in dataclasses.fields(cls):
        if f.name not in out:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        value = out[f.name]
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            unknown = set(value) - {g.name for g in dataclasses.fields(default)}
            if unknown:
                raise ValueError(f"{where}.{f.name} has no setting(s) {sorted(unknown)}")
            out[f.name] = dataclasses.replace(default, **_typed(type(default), value, where))
        elif isinstance(default, tuple) and isinstance(value, list):
            out[f.name] = tuple(value)
    return out


if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # Python 3.10: typing_extensions comes with torch
    from typing_extensions import dataclass_transform


@dataclass_transform(field_specifiers=(field,))
def _with_stage_fields(cls, stages=STAGES):
    """cls as a dataclass with, after its own fields, one field a stage of `stages` (the
    registry's), in run order: its name, its config class, that class's defaults (so a new
    registry entry is a new field, and a config record lists the stages in run order)."""
    annotations = dict(cls.__dict__.get("__annotations__", {}))
    for s in stages:
        annotations[s.name] = s.config
        setattr(cls, s.name, field(default_factory=s.config))
    cls.__annotations__ = annotations
    return dataclass(cls)


@_with_stage_fields
class RunConfig:
    """Every stage's config; defaults are psa's, with PRESETS applied for the backbone. After
    the run-wide settings come the stage fields, one a stage of affext.stages.registry (named
    by its `name`, of its config class), in run order."""

    backbone: str = "resnet38"
    preset: str | None = None  # a named preset over the backbone's (PRESETS: "coco")
    device: str = "auto"
    num_workers: int = default_workers()
    seed: int = 0
    label_source: str = "auto"
    cls_labels: str | None = None
    classes: str | None = None  # classes file ("voc": VOC's 20); None: the dataset's
    overview_images: int = 6

    if TYPE_CHECKING:  # the stage fields, added from the registry

        def __getattr__(self, name: str) -> Any: ...

    @classmethod
    def for_backbone(cls, backbone: str, **overrides) -> RunConfig:
        """A config with the preset of `backbone`, then `overrides` ({"train_cam": {...}} for
        a stage's fields, plain keys for the run's own)."""
        cfg = cls(backbone=backbone)
        for k, v in overrides.items():
            if not isinstance(v, dict):
                setattr(cfg, k, v)
        shared = {k: getattr(cfg, k) for k in SHARED}
        for stage, stage_cls in STAGE_CONFIGS.items():
            stage_overrides = overrides.get(stage, {})
            setattr(cfg, stage, stage_config(stage_cls, stage, shared, **stage_overrides))
        return cfg


# What a config file may hold besides RunConfig's settings: the run's inputs and work
# directory (the command line's --voc-root, --train-list, --eval-list, --workdir).
RUN_PATHS = ("voc_root", "train_list", "eval_list", "workdir")


def read_config_file(path: str | os.PathLike) -> dict:
    """The settings of a config file: YAML (.yaml, .yml; needs pyyaml) or JSON (.json), a
    mapping of RunConfig's settings, with a mapping per stage (train_cam: {lr: 0.1, ...}),
    and optionally RUN_PATHS. Errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file {str(path)!r}")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"cannot read config file {str(path)!r}: {exc}") from exc
    else:
        yaml = _yaml()
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"cannot read config file {str(path)!r}: {exc}") from exc
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of settings")
    known = {f.name for f in dataclasses.fields(RunConfig)} | set(RUN_PATHS)
    unknown = set(values) - known
    if unknown:
        raise ValueError(
            f"config file {str(path)!r}: unknown setting(s) {sorted(unknown)}; "
            "`affext run --print-config` lists them all"
        )
    for stage in STAGE_CONFIGS:
        if stage in values and not isinstance(values[stage], dict):
            raise ValueError(f"config file {str(path)!r}: {stage} must be a mapping of settings")
    return values


def _yaml():
    from ..extras import require

    require("YAML config files (JSON ones need nothing)", ("yaml",))
    import yaml

    return yaml


def merge_settings(base: dict, top: dict) -> dict:
    """`top` over `base`, stage mappings merged key by key; None in `top` keeps base's."""
    out = dict(base)
    for k, v in top.items():
        if v is None:
            continue
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_settings(out[k], v)
        else:
            out[k] = v
    return out


def config_text(cfg: RunConfig, fmt: str = "yaml") -> str:
    """cfg as a config file `affext run --config` reads back: YAML (needs pyyaml) or JSON.
    The run-wide settings (SHARED) appear once, at the top, not in every stage's mapping."""
    values = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples as lists
    for stage in STAGE_CONFIGS:  # the run-wide settings once, at the top (SHARED)
        values[stage] = {k: v for k, v in values[stage].items() if k not in SHARED}
    if fmt == "json":
        return json.dumps(values, indent=2) + "\n"
    yaml = _yaml()
    head = (
        f"# affext run settings: psa's defaults with the {cfg.backbone!r} preset"
        f"{f' and the {cfg.preset!r} one' if cfg.preset else ''}.\n"
        "# `affext run --config FILE` reads this (command-line flags override it); the file\n"
        "# may also give voc_root, train_list, eval_list and workdir.\n"
    )
    return head + yaml.safe_dump(values, sort_keys=False, default_flow_style=None)


__all__ = [
    "CRF_STAGES",
    "PRESETS",
    "RUN_PATHS",
    "SHARED",
    "STAGE_CONFIGS",
    "RunConfig",
    "config_text",
    "merge_settings",
    "read_config_file",
    "stage_config",
]
