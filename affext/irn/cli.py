"""`affext irn ...`: IRN's steps with affext's walk, under IRN's flag names and defaults
(run_sample.py), so that IRN's command lines carry over."""

from __future__ import annotations

import argparse
import os


def _cmd_make_sem_seg_labels(args) -> None:
    from ..data.voc import read_id_list
    from .stage import IrnSemSegConfig, make_sem_seg_labels

    cfg = IrnSemSegConfig(
        beta=args.beta,
        exp_times=args.exp_times,
        sem_seg_bg_thres=args.sem_seg_bg_thres,
        crop_size=args.irn_crop_size,
        num_workers=args.num_workers,
        device=args.device,
    )
    print(
        make_sem_seg_labels(
            args.voc12_root,
            read_id_list(args.infer_list),
            args.cam_out_dir,
            args.irn_weights_name,
            args.sem_seg_out_dir,
            cfg,
            progress=not args.quiet,
        )
    )


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `irn` and its `make-sem-seg-labels` command on affext's subparsers."""
    irn = subparsers.add_parser("irn", help="IRN's steps (Ahn, Cho & Kwak, CVPR 2019), fast walk")
    irn_sub = irn.add_subparsers(dest="irn_command", metavar="command", required=True)
    p = irn_sub.add_parser(
        "make-sem-seg-labels",
        help="IRN's semantic pseudo labels: boundary map, random walk, label PNGs",
        description="IRN's step/make_sem_seg_labels.py with the O(N) random walk: reads IRN's "
        "CAM files and res50_irn.pth, writes IRN's label PNGs; images already done are skipped.",
    )
    p.add_argument(
        "--voc12_root", required=True, help="VOC 2012 folder holding JPEGImages/ (as IRN)"
    )
    p.add_argument("--infer_list", default="voc12/train.txt", help="list of image ids")
    p.add_argument("--cam_out_dir", default="result/cam", help="IRN's CAM .npy files")
    p.add_argument("--irn_weights_name", default="sess/res50_irn.pth", help="IRN's weights")
    p.add_argument("--sem_seg_out_dir", default="result/sem_seg", help="where the PNGs go")
    p.add_argument("--beta", type=float, default=10, help="affinity exponent (default 10)")
    p.add_argument(
        "--exp_times",
        type=int,
        default=8,
        help="the walk takes 2^exp_times steps (default 8: 256)",
    )
    p.add_argument(
        "--sem_seg_bg_thres", type=float, default=0.25, help="background score (default 0.25)"
    )
    p.add_argument(
        "--irn_crop_size",
        type=int,
        default=512,
        help="canvas the images are padded to, IRN's training crop (default 512)",
    )
    p.add_argument(
        "--num_workers",
        type=int,
        default=(os.cpu_count() or 1) // 2,
        help="workers decoding images (default: half the cores, as IRN)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_make_sem_seg_labels)
    return irn


def main(argv: list[str] | None = None) -> int:
    """`python -m affext.irn <command> ...`: the same commands as `affext irn`."""
    from ..errors import group_main

    return group_main("irn", add_parser, argv)
