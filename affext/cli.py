"""The `affext` command: thin argparse over the stage functions (affext.stages.*)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from .extras import MissingExtraError


def _add_common(p: argparse.ArgumentParser, backbone: bool = True) -> None:
    p.add_argument("--voc-root", required=True, help="folder holding JPEGImages/ etc.")
    if backbone:
        p.add_argument(
            "--backbone",
            default="resnet38",
            help="tiny | resnet50 | resnet38 (default: resnet38, as psa)",
        )
        p.add_argument(
            "--preset",
            default=None,
            help="settings for a dataset over the backbone's: coco (MS-COCO 2014, docs/method.md)",
        )
        p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers decoding images (default: min(4, cores - 1))",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--classes",
        default=None,
        help="the dataset's classes: a file with one class name a line, or 'voc' "
        "(default: VOC_ROOT/classes.txt if present, else VOC's 20)",
    )


def _add_labels(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--label-source",
        default="auto",
        choices=("auto", "xml", "npy", "mask"),
        help="image-level labels: XML annotations, psa's cls_labels.npy, or the "
        "classes of the ground-truth masks (auto: npy, else xml, else mask)",
    )
    p.add_argument("--cls-labels", default=None, help="path of a cls_labels.npy")


def _ids(path: str) -> list[str]:
    from .data.voc import read_id_list

    return read_id_list(path)


def _shared(args) -> dict:
    """The run-wide settings given on the command line (None: not given)."""
    from .stages.config import SHARED

    shared = {key: getattr(args, key, None) for key in SHARED}
    shared["num_workers"] = getattr(args, "workers", None)
    return shared


def _stage_config(cls, args, stage: str | None = None, **fields):
    """A stage config: psa defaults, the backbone's preset, then the arguments given."""
    from .stages.config import stage_config

    return stage_config(cls, stage, _shared(args), **fields)


def _cmd_synth(args) -> None:
    from .data.synth import SynthConfig, make_synthetic_voc

    cfg = SynthConfig(num_train=args.num_train, num_val=args.num_val, seed=args.seed)
    out = make_synthetic_voc(args.out, cfg, progress=not args.quiet)
    print(
        f"wrote the synthetic dataset to {out} ({cfg.num_train} train, {cfg.num_val} val "
        f"images; lists in {out / 'ImageSets' / 'Segmentation'})"
    )


def _cmd_coco(args) -> None:
    from .data.coco import convert_coco

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


def _cmd_train_cam(args) -> None:
    from .stages.train_cam import TrainCamConfig, train_cam

    cfg = _stage_config(TrainCamConfig, args, "train_cam", **_training_fields(args))
    print(train_cam(args.voc_root, _ids(args.train_list), args.out, cfg, progress=not args.quiet))


def _cmd_make_cam(args) -> None:
    from .stages.make_cam import MakeCamConfig, make_cam

    cfg = _stage_config(MakeCamConfig, args, "make_cam")
    print(
        make_cam(
            args.voc_root, _ids(args.list), args.cam_net, args.out, cfg, progress=not args.quiet
        )
    )


def _cmd_aff_labels(args) -> None:
    from .stages.aff_labels import AffLabelsConfig, make_aff_labels

    cfg = _stage_config(
        AffLabelsConfig,
        args,
        None,
        alpha_low=args.alpha_low,
        alpha_high=args.alpha_high,
        crf_workers=args.crf_workers,
        **_crf_fields(args),
    )
    print(
        make_aff_labels(
            args.voc_root, _ids(args.list), args.cam_dir, args.out, cfg, progress=not args.quiet
        )
    )


def _cmd_train_aff(args) -> None:
    from .stages.train_aff import TrainAffConfig, train_aff

    cfg = _stage_config(TrainAffConfig, args, "train_aff", **_training_fields(args))
    print(
        train_aff(
            args.voc_root,
            _ids(args.train_list),
            args.aff_labels,
            args.out,
            cfg,
            progress=not args.quiet,
        )
    )


def _cmd_make_rw(args) -> None:
    from .stages.make_rw import MakeRwConfig, make_rw

    cfg = _stage_config(
        MakeRwConfig,
        args,
        "make_rw",
        alpha=args.alpha,
        beta=args.beta,
        iterations=args.iterations,
        batch_size=args.batch_size,
        crf_workers=args.crf_workers,
        **_crf_fields(args),
    )
    if args.no_crf:
        cfg.write_crf = False
    print(
        make_rw(
            args.voc_root,
            _ids(args.list),
            args.cam_dir,
            args.aff_net,
            args.out,
            cfg,
            progress=not args.quiet,
        )
    )


def _cmd_train_seg(args) -> None:
    from .stages.train_seg import TrainSegConfig, train_seg

    cfg = _stage_config(
        TrainSegConfig,
        args,
        "train_seg",
        labels=args.labels,
        init_from=args.init_from,
        **_training_fields(args),
    )
    print(
        train_seg(
            args.voc_root,
            _ids(args.train_list),
            args.rw_dir,
            args.out,
            cfg,
            progress=not args.quiet,
        )
    )


def _cmd_make_seg(args) -> None:
    from .stages.make_seg import MakeSegConfig, make_seg

    cfg = _stage_config(
        MakeSegConfig, args, "make_seg", crf_workers=args.crf_workers, **_crf_fields(args)
    )
    if args.no_crf:
        cfg.write_crf = False
    print(
        make_seg(
            args.voc_root, _ids(args.list), args.seg_net, args.out, cfg, progress=not args.quiet
        )
    )


def _cmd_eval(args) -> None:
    from .stages.evaluate import EvalConfig, evaluate

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


def _cmd_run(args) -> None:
    from . import dist
    from .stages.config import (
        CRF_STAGES,
        RUN_PATHS,
        RunConfig,
        config_text,
        merge_settings,
        read_config_file,
    )
    from .stages.pipeline import run
    from .stages.training import require_weights

    settings = read_config_file(args.config) if args.config else {}
    # command-line flags over the file; None (not given) keeps the file's, preset's or psa's
    flags: dict = {k: v for k, v in _shared(args).items() if k != "backbone"}
    scratch = args.from_scratch or None
    flags["train_cam"] = {"epochs": args.cam_epochs, "weights": args.weights}
    flags["train_aff"] = {"epochs": args.aff_epochs, "weights": args.weights}
    flags["train_seg"] = {
        "epochs": args.seg_epochs,
        "weights": args.weights,
        "labels": args.seg_labels,
    }
    for stage in ("train_cam", "train_aff", "train_seg"):
        flags[stage]["from_scratch"] = scratch
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
    for train in (cfg.train_cam, cfg.train_aff, cfg.train_seg):  # before any stage starts
        require_weights(train)
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
    from . import build_info

    info = build_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return
    width = max(len(k) for k in info)
    for k, v in info.items():
        print(f"{k:<{width}}  {', '.join(v) if isinstance(v, list) else v}")


def _add_crf(p: argparse.ArgumentParser, workers: bool = True) -> None:
    """The dCRF's options: its backend (checked by the stage's CRFConfig) and (for
    pydensecrf) its processes."""
    p.add_argument(
        "--crf-backend",
        metavar="{affext,pydensecrf}",
        help="the dense CRF: affext's op on the stage's device, in its process (default), or "
        "pydensecrf, the reference (pip install 'affext[crf-reference]'), in processes",
    )
    if workers:
        p.add_argument(
            "--crf-workers",
            type=int,
            help="pydensecrf processes (default: half the cores, 1 to 8; 0: in the main "
            "process); the affext backend uses none",
        )


def _crf_fields(args) -> dict:
    """The stage config's crf settings given on the command line."""
    return {"crf": {"backend": args.crf_backend}} if args.crf_backend else {}


def _add_training(p: argparse.ArgumentParser, out_help: str) -> None:
    """The options the training stages share (unset: the backbone's preset, then psa's)."""
    p.add_argument("--weights", help="pretrained backbone weights (a state-dict file)")
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="train resnet38 / resnet50 without --weights (psa starts from ImageNet weights)",
    )
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=("sgd", "adam"))
    p.add_argument("--crop-size", type=int)
    p.add_argument("--seed", type=int, default=0)


def _training_fields(args) -> dict:
    return {
        "weights": args.weights,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "optimizer": args.optimizer,
        "crop_size": args.crop_size,
        "from_scratch": args.from_scratch or None,
    }


def build_parser(with_bench: bool = False) -> argparse.ArgumentParser:
    """The argument parser; `with_bench` imports affext.bench for its arguments."""
    parser = argparse.ArgumentParser(
        prog="affext",
        description="AffinityNet (PSA) pseudo labels from image-level labels, "
        "with fast kernels. `affext data synth --out D` then `affext run --voc-root D ...`.",
    )
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    _add_data_commands(sub)
    _add_stage_commands(sub)
    _add_run_command(sub)
    _add_tool_commands(sub, with_bench)
    from .irn.cli import add_parser as add_irn_parser
    from .psa.cli import add_parser as add_psa_parser

    add_psa_parser(sub)
    add_irn_parser(sub)
    return parser


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


def _add_stage_commands(sub) -> None:
    """One command a stage: train-cam, make-cam, make-aff-labels, train-aff, make-rw,
    train-seg, make-seg, eval."""
    p = sub.add_parser("train-cam", help="train the classifier that gives CAMs")
    _add_common(p)
    _add_labels(p)
    p.add_argument("--train-list", required=True)
    _add_training(p, "folder for cam_net.pt and checkpoints")
    p.set_defaults(func=_cmd_train_cam)

    p = sub.add_parser("make-cam", help="multi-scale CAMs (psa's per-image .npy dicts)")
    _add_common(p)
    _add_labels(p)
    p.add_argument("--list", required=True, help="list file of image ids")
    p.add_argument(
        "--cam-net",
        required=True,
        help="train-cam's output folder, or a weights file (psa's res38_cls.pth)",
    )
    p.add_argument("--out", required=True, help="writes OUT/cam/*.npy and OUT/cam_pred/*.png")
    p.set_defaults(func=_cmd_make_cam)

    p = sub.add_parser("make-aff-labels", help="la / ha dCRF labels for AffinityNet")
    _add_common(p, backbone=False)
    p.add_argument("--list", required=True)
    p.add_argument("--cam-dir", required=True, help="folder of CAM .npy files")
    p.add_argument("--out", required=True, help="writes OUT/la/*.npy and OUT/ha/*.npy")
    p.add_argument("--alpha-low", type=float)
    p.add_argument("--alpha-high", type=float)
    p.add_argument("--device", default="auto", help="where the affext dCRF runs: cpu, cuda or auto")
    _add_crf(p)
    p.set_defaults(func=_cmd_aff_labels)

    p = sub.add_parser("train-aff", help="train AffinityNet")
    _add_common(p)
    p.add_argument("--train-list", required=True)
    p.add_argument("--aff-labels", required=True, help="make-aff-labels' output folder")
    _add_training(p, "folder for aff_net.pt and checkpoints")
    p.set_defaults(func=_cmd_train_aff)

    p = sub.add_parser("make-rw", help="random walk: pseudo-label PNGs")
    _add_common(p)
    _add_labels(p)  # the CAMs' classes are checked against the image-level labels
    p.add_argument("--list", required=True)
    p.add_argument("--cam-dir", required=True)
    p.add_argument(
        "--aff-net",
        required=True,
        help="train-aff's output folder, or a weights file (psa's res38_aff.pth)",
    )
    p.add_argument("--out", required=True, help="writes OUT/rw/*.png and OUT/rw_crf/*.png")
    p.add_argument("--alpha", type=float)
    p.add_argument("--beta", type=float)
    p.add_argument("--iterations", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--no-crf", action="store_true", help="skip the rw_crf labels")
    _add_crf(p)
    p.set_defaults(func=_cmd_make_rw)

    p = sub.add_parser("train-seg", help="train the segmentation network on the pseudo labels")
    _add_common(p)
    p.add_argument("--train-list", required=True)
    p.add_argument("--rw-dir", required=True, help="make-rw's output folder (rw/, rw_crf/)")
    p.add_argument(
        "--labels",
        choices=("rw", "rw_crf"),
        help="which pseudo labels to train on (default: rw_crf, as psa)",
    )
    p.add_argument(
        "--init-from",
        help="start the backbone from a trained network's: a checkpoint or a stage folder "
        "(e.g. train-aff's)",
    )
    _add_training(p, "folder for seg_net.pt and checkpoints")
    p.set_defaults(func=_cmd_train_seg)

    p = sub.add_parser("make-seg", help="segment images: multi-scale + flip, optional dCRF")
    _add_common(p)
    p.add_argument("--list", required=True)
    p.add_argument("--seg-net", required=True, help="train-seg's output folder, or its seg_net.pt")
    p.add_argument("--out", required=True, help="writes OUT/seg/*.png and OUT/seg_crf/*.png")
    p.add_argument("--no-crf", action="store_true", help="skip the seg_crf predictions")
    _add_crf(p)
    p.set_defaults(func=_cmd_make_seg)

    p = sub.add_parser("eval", help="mIoU of a folder of predicted PNGs")
    _add_common(p, backbone=False)
    p.add_argument("--list", required=True)
    p.add_argument("--pred-dir", required=True)
    p.add_argument("--out", default=None, help="also write the scores to this JSON file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_eval)


def _add_run_command(sub) -> None:
    p = sub.add_parser("run", help="the whole pipeline in one work directory")
    _add_common(p)
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
    p.add_argument("--cam-epochs", type=int)
    p.add_argument("--aff-epochs", type=int)
    p.add_argument("--seg-epochs", type=int)
    p.add_argument(
        "--seg-labels",
        choices=("rw", "rw_crf"),
        help="pseudo labels the segmentation network trains on (default: rw_crf, as psa)",
    )
    p.add_argument("--seed", type=int)
    _add_crf(p, workers=False)
    _add_run_options(p)
    p.set_defaults(func=_cmd_run)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """run's config file, overwrite and launcher options. The inputs and the work directory
    may come from the config file, and a flag not given leaves the file's value, so their
    defaults here are None (RunConfig's defaults, the preset's, apply after the file)."""
    p._option_string_actions["--voc-root"].required = False
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
        from . import bench

        bench.add_arguments(p)
        p.set_defaults(func=bench.main)


_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def user_message(exc: BaseException) -> str:
    """The one line `affext` prints for an error: its message, without the traceback that a
    DataLoader worker's error carries, and for an OSError on a path, what is wrong with it."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.filename is not None:
        return _path_problem(exc)
    text = str(exc)
    if _WORKER_TRACEBACK in text:
        # torch re-raises a worker's error with its traceback in the message, the error's own
        # "module.Type: message" line last
        lines = text.split(_WORKER_TRACEBACK, 1)[1].rstrip().splitlines()
        last = next((line for line in reversed(lines) if line and not line[0].isspace()), text)
        return last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split("\n")) if isinstance(exc, OSError) else text


def _path_problem(exc: OSError) -> str:
    """An OSError on a path as a sentence naming the path and what is wrong with it."""
    path = Path(os.fsdecode(exc.filename))
    ancestors = [*reversed(path.parents), path]
    if isinstance(exc, FileExistsError) and path.is_symlink() and not path.exists():
        return f"{str(path)!r} is a link to {os.readlink(path)!r}, which does not exist"
    if isinstance(exc, FileExistsError) and not path.is_dir():
        return f"{str(path)!r} is a file, not a folder: give a folder (or a path to create)"
    if isinstance(exc, NotADirectoryError):
        blocker = next((a for a in ancestors if a.exists() and not a.is_dir()), path)
        return f"cannot create {str(path)!r}: {str(blocker)!r} is a file, not a folder"
    existing = next((a for a in reversed(ancestors) if a.exists()), Path("."))
    if isinstance(exc, PermissionError):
        if existing == path:
            return f"permission denied: {str(path)!r} cannot be opened by this user"
        return (
            f"permission denied: cannot create {str(path)!r}, as {str(existing)!r} is not "
            "writable by this user; choose a folder you can write to"
        )
    if isinstance(exc, FileNotFoundError):
        if existing == path.parent:
            return (
                f"{str(path)!r} does not exist and cannot be created in {str(existing)!r} "
                "(a file system that does not allow it); choose another path"
            )
        missing = ancestors[ancestors.index(existing) + 1]
        return f"cannot open {str(path)!r}: {str(missing)!r} does not exist"
    return f"{exc.strerror}: {str(path)!r}"


def _launch(argv: list[str], nproc: int, workdir: str | None) -> int:
    """`affext ... --nproc N`: the same command under torchrun, N processes on this machine
    (rank logs in WORKDIR/logs when there is a work directory); its exit status."""
    import subprocess

    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launcher += [f"--nproc_per_node={nproc}"]
    if workdir:
        launcher += [f"--log-dir={Path(workdir) / 'logs'}", "--tee=3"]
    return subprocess.call([*launcher, "-m", "affext", *rest])


def main(argv: list[str] | None = None) -> int:
    from . import dist

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(with_bench=bool(argv) and argv[0] == "bench").parse_args(argv)
    if getattr(args, "nproc", None) and not dist.launched():
        workdir = getattr(args, "workdir", None)
        if workdir is None and getattr(args, "config", None):
            from .stages.config import read_config_file

            with contextlib.suppress(ValueError, OSError):  # the ranks report it
                workdir = read_config_file(args.config).get("workdir")
        return _launch(argv, args.nproc, workdir)
    if dist.launched():  # under torchrun: one process group; bars and prints on rank 0
        dist.setup()
        if not dist.is_main() and hasattr(args, "quiet"):
            args.quiet = True
    try:
        rc = args.func(args)
    except (MissingExtraError, OSError, ValueError, FloatingPointError) as exc:  # DatasetError
        print(f"affext {args.command}: error: {user_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"affext {args.command}: interrupted; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    finally:
        dist.cleanup()
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
