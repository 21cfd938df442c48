"""The `affext` command: thin argparse over the stage functions (affext.stages.*)."""

from __future__ import annotations

import argparse
import json
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
        p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers decoding images (default: min(4, cores - 1))",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


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
        AffLabelsConfig, args, None, alpha_low=args.alpha_low, alpha_high=args.alpha_high
    )
    if args.workers is not None:
        cfg.num_workers = max(1, args.workers)
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

    cfg = _stage_config(MakeSegConfig, args, "make_seg", crf_workers=args.crf_workers)
    if args.no_crf:
        cfg.write_crf = False
    print(
        make_seg(
            args.voc_root, _ids(args.list), args.seg_net, args.out, cfg, progress=not args.quiet
        )
    )


def _cmd_eval(args) -> None:
    from .stages.evaluate import evaluate

    result = evaluate(
        args.voc_root, args.pred_dir, _ids(args.list), args.out, progress=not args.quiet
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'class':<14}{'IoU':>8}{'prec.':>8}{'recall':>8}")
    for name, _iou in result["iou"].items():
        cells = [result[k][name] for k in ("iou", "precision", "recall")]
        print(f"{name:<14}" + "".join(f"{'-' if c is None else f'{c:.1f}':>8}" for c in cells))
    print(
        f"{'mIoU':<14}{result['miou']:>8.2f}   ({result['images']} images, "
        f"{result['classes_counted']} classes counted)"
    )


def _cmd_run(args) -> None:
    from .stages.config import RunConfig
    from .stages.pipeline import run

    # None (not given) is left out by stage_config: the preset's or psa's value stays.
    overrides: dict = {k: v for k, v in _shared(args).items() if k != "backbone" and v is not None}
    overrides["train_cam"] = {"epochs": args.cam_epochs, "weights": args.weights}
    overrides["train_aff"] = {"epochs": args.aff_epochs, "weights": args.weights}
    overrides["train_seg"] = {
        "epochs": args.seg_epochs,
        "weights": args.weights,
        "labels": args.seg_labels,
    }
    cfg = RunConfig.for_backbone(args.backbone, **overrides)
    metrics = run(
        args.voc_root, args.train_list, args.eval_list, args.workdir, cfg, progress=not args.quiet
    )
    shown = ("cam_miou", "rw_miou", "rw_crf_miou", "seg_miou", "seg_crf_miou")
    summary = {k: metrics[k] for k in shown if k in metrics}
    print(json.dumps({**summary, "stage_seconds": metrics["stage_seconds"]}, indent=2))
    print(
        f"metrics: {Path(args.workdir) / 'metrics.json'}   "
        f"overview: {Path(args.workdir) / 'overview.png'}"
    )


def _cmd_info(args) -> None:
    from . import build_info

    info = build_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return
    width = max(len(k) for k in info)
    for k, v in info.items():
        print(f"{k:<{width}}  {', '.join(v) if isinstance(v, list) else v}")


def _add_training(p: argparse.ArgumentParser, out_help: str) -> None:
    """The options train-cam and train-aff share (unset: the backbone's preset, then psa's)."""
    p.add_argument("--weights", help="pretrained backbone weights (a state-dict file)")
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
    p.set_defaults(func=_cmd_aff_labels)

    p = sub.add_parser("train-aff", help="train AffinityNet")
    _add_common(p)
    p.add_argument("--train-list", required=True)
    p.add_argument("--aff-labels", required=True, help="make-aff-labels' output folder")
    _add_training(p, "folder for aff_net.pt and checkpoints")
    p.set_defaults(func=_cmd_train_aff)

    p = sub.add_parser("make-rw", help="random walk: pseudo-label PNGs")
    _add_common(p)
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
    p.add_argument(
        "--crf-workers",
        type=int,
        help="processes for the dCRF (default: half the cores, 1 to 8; 0: in the main process)",
    )
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
    p.add_argument(
        "--crf-workers",
        type=int,
        help="processes for the dCRF (default: half the cores, 1 to 8; 0: in the main process)",
    )
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
    p.add_argument("--train-list", required=True)
    p.add_argument("--eval-list", required=True, help="ids scored against the ground truth")
    p.add_argument("--workdir", required=True)
    p.add_argument("--weights", help="pretrained backbone weights for the three networks")
    p.add_argument("--cam-epochs", type=int)
    p.add_argument("--aff-epochs", type=int)
    p.add_argument("--seg-epochs", type=int)
    p.add_argument(
        "--seg-labels",
        choices=("rw", "rw_crf"),
        help="pseudo labels the segmentation network trains on (default: rw_crf, as psa)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_run)


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(with_bench=bool(argv) and argv[0] == "bench").parse_args(argv)
    try:
        rc = args.func(args)
    except (MissingExtraError, FileNotFoundError, ValueError) as exc:  # DatasetError: a ValueError
        print(f"affext {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"affext {args.command}: interrupted; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
