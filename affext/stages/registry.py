"""The pipeline's stages in one list, in the order `affext run` does them.

Each entry names a stage once and ties its spellings: `name` (its RunConfig field, its
PRESETS key and its folder in a run's work directory, e.g. "aff_labels"), `command` (its
`affext` subcommand and the name of its config and time records, e.g. "make-aff-labels") and
its function's name (e.g. "make_aff_labels"); `stage()` finds an entry by any of them. The
entry also gives the stage's function and config class, the ids of a run it works on, the
earlier stages' outputs it reads (and the flags naming them on its command), what it writes,
which of its outputs `affext run` scores, and the config fields with flags of their own.

affext.stages.config (RunConfig's stage fields, STAGE_CONFIGS), affext.stages.pipeline
(run_stages, the records, the scores), train-seg's init_from names and the `affext` command
(one subcommand a stage, its flags from the config's fields, `affext run`'s per-stage flags)
read STAGES, so a new stage is one entry here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .aff_labels import AffLabelsConfig, make_aff_labels
from .make_cam import MakeCamConfig, make_cam
from .make_rw import MakeRwConfig, make_rw
from .make_seg import MakeSegConfig, make_seg
from .train_aff import TrainAffConfig, train_aff
from .train_cam import TrainCamConfig, train_cam
from .train_seg import TrainSegConfig, train_seg


@dataclass(frozen=True)
class Input:
    """An earlier stage's output a stage reads: the folder `sub` (or, "", the folder itself)
    of stage `stage`; `flag` names it on the stage's command."""

    stage: str
    flag: str
    help: str | None = None
    sub: str = ""


@dataclass(frozen=True)
class Flag:
    """A config field with a flag of its own on a stage's command: --<field with hyphens>,
    of the field's type (its default's), with these choices and help."""

    field: str
    choices: tuple[str, ...] | None = None
    help: str | None = None
    name: str | None = None  # the option, where not --<field> (`affext run`'s --cam-epochs)

    @property
    def option(self) -> str:
        return self.name or "--" + self.field.replace("_", "-")


# The training stages' (TrainConfig's) fields with flags of their own on their commands.
TRAINING_FLAGS = (
    Flag("epochs"),
    Flag("batch_size"),
    Flag("lr"),
    Flag("optimizer", choices=("sgd", "adam")),
    Flag("crop_size"),
)

# The ids of a run a stage works on: its training list, its eval list, or both (in order,
# each once).
IDS = ("train", "eval", "both")


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: called as function(voc_root, ids, *inputs, out_dir, config,
    progress=...), inputs in the order of `inputs`."""

    name: str  # RunConfig's field, PRESETS' key, the folder in a run's work directory
    command: str  # the `affext` subcommand; its config record <command>.config.json
    function: Callable[..., Any]
    config: type
    help: str  # the subcommand's help
    ids: str  # one of IDS
    inputs: tuple[Input, ...]
    outputs: tuple[str, ...]  # what OUT_DIR receives: "cam/*.npy", "cam_net.pt"
    scored: tuple[tuple[str, str], ...] = ()  # (score name, output folder) a run evaluates
    flags: tuple[Flag, ...] = ()
    run_flags: tuple[Flag, ...] = ()  # its fields with flags on `affext run`
    stage_root: bool = False  # `affext run` passes stage_root=WORKDIR (init_from's names)

    def __post_init__(self) -> None:
        if self.ids not in IDS:
            raise ValueError(f"stage {self.name}: ids {self.ids!r} is not one of {IDS}")

    @property
    def training(self) -> bool:
        """Whether the stage trains a network from backbone weights (its config has them)."""
        return "weights" in self.fields

    @property
    def fields(self) -> dict[str, dataclasses.Field]:
        """The config's fields by name."""
        return {f.name: f for f in dataclasses.fields(self.config)}

    def output(self, work: str | Path, sub: str = "") -> Path:
        """The stage's folder in the work directory WORK, or its output folder `sub` there."""
        folders = {o.split("/", 1)[0] for o in self.outputs if "/" in o}
        if sub and sub not in folders:
            raise ValueError(f"stage {self.name} writes no folder {sub!r}; it writes {folders}")
        return Path(work) / self.name / sub if sub else Path(work) / self.name


CAM_NET_HELP = "train-cam's output folder, or a weights file (psa's res38_cls.pth)"
AFF_NET_HELP = "train-aff's output folder, or a weights file (psa's res38_aff.pth)"
LABELS_HELP = "which pseudo labels to train on (default: rw_crf, as psa)"
SEG_LABELS_HELP = "pseudo labels the segmentation network trains on (default: rw_crf, as psa)"
INIT_FROM_HELP = (
    "start the backbone from a trained network's: a checkpoint or a stage folder (e.g. train-aff's)"
)

STAGES: tuple[Stage, ...] = (
    Stage(
        "train_cam",
        "train-cam",
        train_cam,
        TrainCamConfig,
        "train the classifier that gives CAMs",
        ids="train",
        inputs=(),
        outputs=("cam_net.pt",),
        run_flags=(Flag("epochs", name="--cam-epochs"),),
    ),
    Stage(
        "make_cam",
        "make-cam",
        make_cam,
        MakeCamConfig,
        "multi-scale CAMs (psa's per-image .npy dicts)",
        ids="both",
        inputs=(Input("train_cam", "--cam-net", CAM_NET_HELP),),
        outputs=("cam/*.npy", "cam_pred/*.png"),
        scored=(("cam", "cam_pred"),),
    ),
    Stage(
        "aff_labels",
        "make-aff-labels",
        make_aff_labels,
        AffLabelsConfig,
        "la / ha dCRF labels for AffinityNet",
        ids="train",
        inputs=(Input("make_cam", "--cam-dir", "folder of CAM .npy files", sub="cam"),),
        outputs=("la/*.npy", "ha/*.npy"),
        flags=(Flag("alpha_low"), Flag("alpha_high")),
    ),
    Stage(
        "train_aff",
        "train-aff",
        train_aff,
        TrainAffConfig,
        "train AffinityNet",
        ids="train",
        inputs=(Input("aff_labels", "--aff-labels", "make-aff-labels' output folder"),),
        outputs=("aff_net.pt",),
        run_flags=(Flag("epochs", name="--aff-epochs"),),
    ),
    Stage(
        "make_rw",
        "make-rw",
        make_rw,
        MakeRwConfig,
        "random walk: pseudo-label PNGs",
        ids="both",
        inputs=(
            Input("make_cam", "--cam-dir", sub="cam"),
            Input("train_aff", "--aff-net", AFF_NET_HELP),
        ),
        outputs=("rw/*.png", "rw_crf/*.png"),
        scored=(("rw", "rw"), ("rw_crf", "rw_crf")),
        flags=(Flag("alpha"), Flag("beta"), Flag("iterations"), Flag("batch_size")),
    ),
    Stage(
        "train_seg",
        "train-seg",
        train_seg,
        TrainSegConfig,
        "train the segmentation network on the pseudo labels",
        ids="train",
        inputs=(Input("make_rw", "--rw-dir", "make-rw's output folder (rw/, rw_crf/)"),),
        outputs=("seg_net.pt",),
        flags=(
            Flag("labels", choices=("rw", "rw_crf"), help=LABELS_HELP),
            Flag("init_from", help=INIT_FROM_HELP),
        ),
        run_flags=(
            Flag("epochs", name="--seg-epochs"),
            Flag("labels", choices=("rw", "rw_crf"), help=SEG_LABELS_HELP, name="--seg-labels"),
        ),
        stage_root=True,
    ),
    Stage(
        "make_seg",
        "make-seg",
        make_seg,
        MakeSegConfig,
        "segment images: multi-scale + flip, optional dCRF",
        ids="eval",
        inputs=(Input("train_seg", "--seg-net", "train-seg's output folder, or its seg_net.pt"),),
        outputs=("seg/*.png", "seg_crf/*.png"),
        scored=(("seg", "seg"), ("seg_crf", "seg_crf")),
    ),
)


def stage(name: str, stages: tuple[Stage, ...] | None = None) -> Stage:
    """The stage of STAGES (or `stages`) called `name` in any of its spellings: its name
    ("aff_labels"), its command ("make-aff-labels") or its function's name
    ("make_aff_labels")."""
    for s in STAGES if stages is None else stages:
        if name in (s.name, s.command, s.function.__name__):
            return s
    known = ", ".join(s.name for s in (STAGES if stages is None else stages))
    raise ValueError(f"no stage {name!r}; the stages are {known}")


__all__ = ["IDS", "STAGES", "TRAINING_FLAGS", "Flag", "Input", "Stage", "stage"]
