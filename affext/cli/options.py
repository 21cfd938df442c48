"""The options several `affext` commands share, and how their values become a stage's
config (affext.stages.config.stage_config: built once, from every value given)."""

from __future__ import annotations

import argparse


def _add_common(
    p: argparse.ArgumentParser, backbone: bool = True, voc_root_required: bool = True
) -> None:
    p.add_argument("--voc-root", required=voc_root_required, help="folder holding JPEGImages/ etc.")
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
    from ..data.voc import read_id_list

    return read_id_list(path)


def _shared(args) -> dict:
    """The run-wide settings given on the command line (None: not given)."""
    from ..stages.config import SHARED

    shared = {key: getattr(args, key, None) for key in SHARED}
    shared["num_workers"] = getattr(args, "workers", None)
    return shared


def _stage_config(cls, args, stage: str | None = None, **fields):
    """A stage config: psa defaults, the backbone's preset, then the arguments given."""
    from ..stages.config import stage_config

    return stage_config(cls, stage, _shared(args), **fields)


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


def _training_fields(args) -> dict:
    """The training stage config's settings given on the command line."""
    from ..stages.registry import TRAINING_FLAGS

    return {
        "weights": args.weights,
        "from_scratch": args.from_scratch or None,
        **{f.field: getattr(args, f.field) for f in TRAINING_FLAGS},
    }
