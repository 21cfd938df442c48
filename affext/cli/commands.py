"""The `affext` command's own commands: data (synth, coco), run, info and bench."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import _add_common, _add_crf, _add_labels, _crf_fields, _shared
from .stages import _add_field_flag, _dest, _stages


def _cmd_synth(args) -> None:
    from ..data.synth import SynthConfig, make_synthetic_voc

    cfg = SynthConfig(num_train=args.num_train, num_val=args.num_val, seed=args.seed)
    out = make_synthetic_voc(args.out, cfg, progress=not args.quiet)
    print(
        f"wrote the synthetic dataset to {out} ({cfg.num_train} train, {cfg.num_val} val "
        f"images; lists in {out / 'ImageSets' / 'Segmentation'})"
    )


def _cmd_coco(args) -> None:
    from ..data.coco import convert_coco

    done = convert_coco(
        args.annotations,
        args.images,
        args.out,
        args.split,
        copy=args.copy,
        workers=args.workers,
        progress=not args.quiet,
    )
    lists = Path(args.out) / "ImageSets" / "Segmentation"
    print(
        f"wrote COCO {args.split} to {args.out}: {done['labeled']} images with labels in "
        f"{lists / (args.split + '.txt')}, {done['unlabeled']} without any in "
        f"{lists / (args.split + '_unlabeled.txt')}, {done['classes']} classes "
        f"({done['converted']} masks written now)"
    )


def _cmd_run(args) -> None:
    from .. import dist
    from ..stages.config import (
        CRF_STAGES,
        RUN_PATHS,
        RunConfig,
        config_text,
        merge_settings,
        read_config_file,
    )
    from ..stages.pipeline import run
    from ..stages.registry import STAGES
    from ..stages.training import require_weights

    settings = read_config_file(args.config) if args.config else {}
    # command-line flags over the file; None (not given) keeps the file's, preset's or psa's
    flags: dict = {k: v for k, v in _shared(args).items() if k != "backbone"}
    for s in STAGES:
        given = {f.field: getattr(args, _dest(f.option)) for f in s.run_flags}
        if s.training:  # --weights and --from-scratch: every network the run trains
            given.update(weights=args.weights, from_scratch=args.from_scratch or None)
        if given:
            flags[s.name] = given
    for stage in CRF_STAGES:  # --crf-backend: every stage with a dCRF
        flags.setdefault(stage, {}).update(_crf_fields(args))
    flags.update({k: getattr(args, k) for k in RUN_PATHS})
    settings = merge_settings(settings, flags)
    paths = {k: settings.pop(k, None) for k in RUN_PATHS}
    backbone = args.backbone or settings.pop("backbone", None) or "resnet38"
    settings.pop("backbone", None)
    cfg = RunConfig.for_backbone(backbone, **settings)
    if args.print_config:
        print(config_text(cfg, "json" if args.print_config == "json" else "yaml"), end="")
        return
    missing = [k for k, v in paths.items() if v is None]
    if missing:
        flags_needed = ", ".join("--" + k.replace("_", "-") for k in missing)
        raise ValueError(f"{flags_needed} needed (on the command line or in the --config file)")
    for s in STAGES:  # before any stage starts
        if s.training:
            require_weights(getattr(cfg, s.name))
    metrics = run(
        paths["voc_root"],
        paths["train_list"],
        paths["eval_list"],
        paths["workdir"],
        cfg,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    if not dist.is_main():
        return
    workdir = Path(paths["workdir"])
    shown = ("cam_miou", "rw_miou", "rw_crf_miou", "seg_miou", "seg_crf_miou")
    summary = {k: metrics[k] for k in shown if k in metrics}
    print(json.dumps({**summary, "stage_seconds": metrics["stage_seconds"]}, indent=2))
    print(f"metrics: {workdir / 'metrics.json'}   overview: {workdir / 'overview.png'}")


def _cmd_info(args) -> None:
    from .. import build_info

    info = build_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return
    width = max(len(k) for k in info)
    for k, v in info.items():
        print(f"{k:<{width}}  {', '.join(v) if isinstance(v, list) else v}")


def _add_data_commands(sub) -> None:
    data = sub.add_parser("data", help="datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="command", required=True)
    p = data_sub.add_parser("synth", help="write the embedded synthetic dataset (VOC layout)")
    p.add_argument("--out", required=True)
    p.add_argument("--num-train", type=int, default=300)
    p.add_argument("--num-val", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_synth)
    p = data_sub.add_parser(
        "coco", help="MS-COCO's instances_*.json and images in the VOC layout (80 classes)"
    )
    p.add_argument("--annotations", required=True, help="e.g. annotations/instances_train2014.json")
    p.add_argument("--images", required=True, help="the split's image folder, e.g. train2014/")
    p.add_argument("--out", required=True, help="the dataset root (both splits go into one)")
    p.add_argument("--split", required=True, help="the list's name: train, val, ...")
    p.add_argument("--copy", action="store_true", help="copy the images instead of linking them")
    p.add_argument(
        "--workers", type=int, default=None, help="processes decoding masks (default: every core)"
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_coco)


def _add_run_command(sub) -> None:
    p = sub.add_parser("run", help="the whole pipeline in one work directory")
    _add_common(p, voc_root_required=False)
    _add_labels(p)
    p.add_argument("--train-list")
    p.add_argument("--eval-list", help="ids scored against the ground truth")
    p.add_argument("--workdir")
    p.add_argument("--weights", help="pretrained backbone weights for the three networks")
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="train resnet38 / resnet50 without --weights (psa starts from ImageNet weights)",
    )
    for stage in _stages():  # the stages' own flags on the run (--cam-epochs, ...)
        for flag in stage.run_flags:
            _add_field_flag(p, stage, flag)
    p.add_argument("--seed", type=int)
    _add_crf(p, workers=False)
    _add_run_options(p)
    p.set_defaults(func=_cmd_run)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """run's config file, overwrite and launcher options. The inputs and the work directory
    may come from the config file, and a flag not given leaves the file's value, so their
    defaults here are None (RunConfig's defaults, the preset's, apply after the file)."""
    p.set_defaults(backbone=None, device=None, label_source=None, voc_root=None)
    p.add_argument(
        "--config",
        help="YAML or JSON file of settings, any stage's (see --print-config); "
        "flags given here override it",
    )
    p.add_argument(
        "--print-config",
        nargs="?",
        const="yaml",
        choices=("yaml", "json"),
        help="print the resolved settings (the preset's defaults, the file's, the flags') "
        "in a form --config reads, and exit",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="redo the first stage whose outputs were made with other settings, and the "
        "later ones (without it such a run is refused)",
    )
    p.add_argument(
        "--nproc",
        type=int,
        help="processes on this machine (GPUs): launches torchrun for you; for several "
        "machines run torchrun yourself (README)",
    )


def _add_tool_commands(sub, with_bench: bool) -> None:
    """info, and bench (its options only when it runs: they import the references)."""
    p = sub.add_parser("info", help="how the kernels were built")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("bench", help="benchmarks against the reference formulations")
    if with_bench:  # imported only when asked for: it pulls in the reference formulations
        from .. import bench

        bench.add_arguments(p)
        p.set_defaults(func=bench.main)
