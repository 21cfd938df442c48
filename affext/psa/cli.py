"""`affext psa ...`: psa's four scripts with psa's flags, spellings and defaults.

Differences from psa: --network defaults to the ResNet-38 network (psa's default is VGG-16,
not supported here) and --session_name to res38_cls / res38_aff; --device is added (auto: the
GPU when there is one); --num_workers is capped at the machine's cores; --val_list is accepted
and not used (psa only prints a validation loss from it).
"""

from __future__ import annotations

import argparse


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _training(p: argparse.ArgumentParser, kind: str, batch: int, epochs: int) -> None:
    p.add_argument("--batch_size", default=batch, type=int)
    p.add_argument("--max_epoches", default=epochs, type=int)
    p.add_argument("--network", default=f"network.resnet38_{kind}", type=str)
    p.add_argument("--lr", default=0.1, type=float)
    p.add_argument("--num_workers", default=8, type=int)
    p.add_argument("--wt_dec", default=5e-4, type=float)
    p.add_argument(
        "--weights",
        required=True,
        type=str,
        help="psa's ImageNet ilsvrc-cls_rna-a1_cls1000_ep-0001.params, or a ResNet-38 "
        "torch state dict (its backbone part is used, as psa's strict=False load does)",
    )
    p.add_argument("--train_list", default="voc12/train_aug.txt", type=str)
    p.add_argument("--val_list", default="voc12/val.txt", type=str, help="accepted, not used")
    p.add_argument(
        "--session_name",
        default=f"res38_{kind}",
        type=str,
        help="writes SESSION_NAME.pth (psa's state dict); per-epoch checkpoints go to "
        "SESSION_NAME.affext/, from which a rerun resumes (delete it to start over)",
    )
    p.add_argument("--crop_size", default=448, type=int)
    p.add_argument("--voc12_root", required=True, type=str)


def _command(name: str):
    """The script function `name`, imported when the command runs (keeps --help light)."""

    def run(args):
        from . import scripts

        return getattr(scripts, name)(args)

    run.__name__ = name
    return run


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `psa` and its commands on the `affext` command's subparsers."""
    psa = subparsers.add_parser(
        "psa",
        help="psa's scripts (train_cls, infer_cls, train_aff, infer_aff) with psa's flags",
        description="Drop-in for psa's scripts (jiwoon-ahn/psa): same flags and files, run "
        "by affext's stages.",
    )
    sub = psa.add_subparsers(dest="psa_command", metavar="command", required=True)

    p = sub.add_parser("train_cls", help="psa train_cls.py: the classifier")
    _training(p, "cls", batch=16, epochs=15)
    _device(p)
    p.set_defaults(func=_command("train_cls"))

    p = sub.add_parser("infer_cls", help="psa infer_cls.py: CAMs, la / ha labels")
    p.add_argument("--weights", required=True, type=str, help="e.g. psa's res38_cls.pth")
    p.add_argument("--network", default="network.resnet38_cls", type=str)
    p.add_argument("--infer_list", default="voc12/val.txt", type=str)
    p.add_argument("--num_workers", default=8, type=int)
    p.add_argument("--voc12_root", required=True, type=str)
    p.add_argument("--low_alpha", default=4, type=int)
    p.add_argument("--high_alpha", default=32, type=int)
    p.add_argument("--out_cam", default=None, type=str)
    p.add_argument("--out_la_crf", default=None, type=str)
    p.add_argument("--out_ha_crf", default=None, type=str)
    p.add_argument("--out_cam_pred", default=None, type=str)
    _device(p)
    p.set_defaults(func=_command("infer_cls"))

    p = sub.add_parser("train_aff", help="psa train_aff.py: AffinityNet")
    _training(p, "aff", batch=8, epochs=8)
    p.add_argument("--la_crf_dir", required=True, type=str)
    p.add_argument("--ha_crf_dir", required=True, type=str)
    _device(p)
    p.set_defaults(func=_command("train_aff"))

    p = sub.add_parser("infer_aff", help="psa infer_aff.py: random walk, pseudo-label PNGs")
    p.add_argument("--weights", required=True, type=str, help="e.g. psa's res38_aff.pth")
    p.add_argument("--network", default="network.resnet38_aff", type=str)
    p.add_argument("--infer_list", default="voc12/train_aug.txt", type=str)
    p.add_argument("--num_workers", default=8, type=int)
    p.add_argument("--cam_dir", required=True, type=str)
    p.add_argument("--voc12_root", required=True, type=str)
    p.add_argument("--alpha", default=16, type=int)
    p.add_argument("--out_rw", required=True, type=str)
    p.add_argument("--beta", default=8, type=int)
    p.add_argument("--logt", default=8, type=int)
    _device(p)
    p.set_defaults(func=_command("infer_aff"))

    p = sub.add_parser(
        "convert_weights",
        help="psa's MXNet ImageNet ResNet-38 (.params) -> torch state dict, without mxnet",
    )
    p.add_argument("params", help="e.g. ilsvrc-cls_rna-a1_cls1000_ep-0001.params")
    p.add_argument("out", help="torch state dict file to write (psa's / affext's names)")
    p.set_defaults(func=_command("convert_weights"))
    return psa


def main(argv: list[str] | None = None) -> int:
    """`python -m affext.psa <command> ...`: the same commands as `affext psa`."""
    from ..errors import group_main

    return group_main("psa", add_parser, argv)
