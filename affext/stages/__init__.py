"""The pipeline stages (docs/method.md §1-8), each a function a notebook can call:

    train_cam -> make_cam -> make_aff_labels -> train_aff -> make_rw -> train_seg -> make_seg
    -> evaluate

and `run`, which does them all in one work directory. The `affext` command wraps each.
"""

# ruff: noqa: E402 - the imports below come after the check that names the missing extra
from ..extras import require

require("affext's pipeline stages", ("PIL", "tqdm"))

from .aff_labels import AffLabelsConfig, make_aff_labels
from .config import PRESETS, RunConfig, stage_config
from .crf import CRFConfig, crf_inference
from .evaluate import EvalConfig, evaluate
from .make_cam import MakeCamConfig, make_cam
from .make_rw import MakeRwConfig, make_rw
from .make_seg import MakeSegConfig, make_seg
from .overview import write_overview
from .pipeline import run
from .train_aff import TrainAffConfig, train_aff
from .train_cam import TrainCamConfig, train_cam
from .train_seg import TrainSegConfig, train_seg

__all__ = [
    "PRESETS",
    "AffLabelsConfig",
    "CRFConfig",
    "EvalConfig",
    "MakeCamConfig",
    "MakeRwConfig",
    "MakeSegConfig",
    "RunConfig",
    "TrainAffConfig",
    "TrainCamConfig",
    "TrainSegConfig",
    "crf_inference",
    "evaluate",
    "make_aff_labels",
    "make_cam",
    "make_rw",
    "make_seg",
    "run",
    "stage_config",
    "train_aff",
    "train_cam",
    "train_seg",
    "write_overview",
]
