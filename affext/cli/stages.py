"""`affext <stage>`: one command a stage of affext.stages.registry, its flags from the stage's
entry and its config's fields, and `affext eval`.

A stage's command takes --voc-root, the image list (--train-list for a training stage, else
--list), a flag for each of its inputs, --out, and by its config's fields: --backbone,
--preset and --device (`backbone`), --label-source and --cls-labels (`label_source`), the
training options (`weights`), --crf-backend (`crf`), --crf-workers (`crf_workers`), --no-crf
(`write_crf`), and one flag for each of the entry's `flags`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json

from ..extras import MissingExtraError
from .options import (
    _add_common,
    _add_crf,
    _add_labels,
    _crf_fields,
    _ids,
    _stage_config,
    _training_fields,
)


def _stages():
    """The registry's stages; MissingExtraError without the pipeline extra."""
    from ..stages.registry import STAGES

    return STAGES


def add_stage_commands(sub) -> MissingExtraError | None:
    """One command a stage (train-cam, make-cam, make-aff-labels, train-aff, make-rw,
    train-seg, make-seg), then eval. Without the pipeline extra there are no stage commands:
    the error saying which extra to install is returned instead."""
    try:
        stages = _stages()
    except MissingExtraError as exc:
        missing: MissingExtraError | None = exc
    else:
        missing = None
        for stage in stages:
            add_stage_command(sub, stage)
    _add_eval_command(sub)
    return missing


def _list_flag(stage) -> str:
    return "--train-list" if stage.training else "--list"


def _dest(option: str) -> str:
    """Where argparse keeps an option's value: --cam-dir -> cam_dir."""
    return option.lstrip("-").replace("-", "_")


def _out_help(stage) -> str:
    if stage.training:
        return f"folder for {stage.outputs[0]} and checkpoints"
    return "writes " + " and ".join(f"OUT/{o}" for o in stage.outputs)


def _add_field_flag(p: argparse.ArgumentParser, stage, flag) -> None:
    """flag's option, of its config field's type (its default's; a string, argparse's own,
    for a str field, one that defaults to None, or one with choices)."""
    field = stage.fields[flag.field]
    default = (
        field.default_factory()
        if field.default_factory is not dataclasses.MISSING
        else field.default
    )
    kind = None if flag.choices or default is None or isinstance(default, str) else type(default)
    p.add_argument(flag.option, type=kind, choices=flag.choices, help=flag.help)


def add_stage_command(sub, stage) -> argparse.ArgumentParser:
    """The command of one registry stage (see the module's docstring)."""
    from ..stages.registry import TRAINING_FLAGS

    fields = stage.fields
    p = sub.add_parser(stage.command, help=stage.help)
    _add_common(p, backbone="backbone" in fields)
    if "label_source" in fields:
        _add_labels(p)
    p.add_argument(_list_flag(stage), required=True, help="list file of image ids")
    for source in stage.inputs:
        p.add_argument(source.flag, required=True, help=source.help)
    if stage.training:
        p.add_argument("--weights", help="pretrained backbone weights (a state-dict file)")
        p.add_argument(
            "--from-scratch",
            action="store_true",
            help="train resnet38 / resnet50 without --weights (psa starts from ImageNet weights)",
        )
    p.add_argument("--out", required=True, help=_out_help(stage))
    for flag in (*TRAINING_FLAGS, *stage.flags) if stage.training else stage.flags:
        _add_field_flag(p, stage, flag)
    if stage.training:
        p.add_argument("--seed", type=int, default=0)
    if "device" in fields and "backbone" not in fields:
        p.add_argument(
            "--device", default="auto", help="where the affext dCRF runs: cpu, cuda or auto"
        )
    if "write_crf" in fields:
        refined = " and ".join(o.split("/")[0] for o in stage.outputs if "_crf" in o)
        p.add_argument(
            "--no-crf", action="store_true", help=f"skip the {refined or 'dCRF'} outputs"
        )
    if "crf" in fields:
        _add_crf(p, workers="crf_workers" in fields)
    p.set_defaults(func=functools.partial(_cmd_stage, stage))
    return p


def _cmd_stage(stage, args) -> None:
    """Run a registry stage with the command line's values: its config built once from them
    (psa's defaults, the backbone's preset, then the flags given)."""
    fields = stage.fields
    overrides = {f.field: getattr(args, _dest(f.option)) for f in stage.flags}
    if stage.training:  # the stage refuses an ImageNet backbone without weights itself
        overrides.update(_training_fields(args))
    if "crf" in fields:
        overrides.update(_crf_fields(args))
        if "crf_workers" in fields:
            overrides["crf_workers"] = args.crf_workers
    if "write_crf" in fields and args.no_crf:
        overrides["write_crf"] = False
    cfg = _stage_config(stage.config, args, stage.name, **overrides)
    ids = _ids(getattr(args, _dest(_list_flag(stage))))
    inputs = [getattr(args, _dest(source.flag)) for source in stage.inputs]
    print(stage.function(args.voc_root, ids, *inputs, args.out, cfg, progress=not args.quiet))


def _add_eval_command(sub) -> None:
    p = sub.add_parser("eval", help="mIoU of a folder of predicted PNGs")
    _add_common(p, backbone=False)
    p.add_argument("--list", required=True)
    p.add_argument("--pred-dir", required=True)
    p.add_argument("--out", default=None, help="also write the scores to this JSON file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> None:
    from ..stages.evaluate import EvalConfig, evaluate

    cfg = EvalConfig(classes=args.classes)
    result = evaluate(
        args.voc_root, args.pred_dir, _ids(args.list), args.out, cfg, progress=not args.quiet
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    width = max(14, *(len(name) + 2 for name in result["iou"]))  # COCO's longest: 16
    print(f"{'class':<{width}}{'IoU':>8}{'prec.':>8}{'recall':>8}")
    for name, _iou in result["iou"].items():
        cells = [result[k][name] for k in ("iou", "precision", "recall")]
        row = "".join(f"{'-' if c is None else f'{c:.1f}':>8}" for c in cells)
        print(f"{name:<{width}}" + row)
    print(
        f"{'mIoU':<{width}}{result['miou']:>8.2f}   ({result['images']} images, "
        f"{result['classes_counted']} classes counted)"
    )
