"""`affext run`: every stage in order in one work directory, then metrics.json and
overview.png.

WORKDIR/
  train_cam/  cam_net.pt, checkpoints, config      make_cam/  cam/*.npy, cam_pred/*.png
  aff_labels/ la/*.npy, ha/*.npy                   train_aff/ aff_net.pt, checkpoints
  make_rw/    rw/*.png, rw_crf/*.png               eval/      cam.json, rw.json, rw_crf.json
  train_seg/  seg_net.pt, checkpoints              make_seg/  seg/*.png, seg_crf/*.png (eval ids)
  metrics.json  overview.png  run.config.json
Each stage resumes where an interrupted run stopped. The stages, their folders and outputs
are affext.stages.registry's, the configs and presets affext.stages.config's, the overview
affext.stages.overview's.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from .. import dist
from ..data.voc import VOCDataset, read_id_list, unique_ids
from ..files import atomic_write_json
from ..records import check_config, config_changes, record_config
from . import registry
from .common import StageTimer
from .config import PRESETS, RunConfig
from .evaluate import EvalConfig, evaluate
from .make_rw import load_throughput
from .overview import write_overview
from .registry import stage
from .train_cam import image_labels


def _ids(arg: str | os.PathLike | Sequence[str]) -> list[str]:
    if isinstance(arg, (str, os.PathLike)):
        return read_id_list(arg)
    return unique_ids(arg)  # a repeated id would be trained and scored twice


def run(
    voc_root: str | os.PathLike,
    train_ids: str | os.PathLike | Sequence[str],
    eval_ids: str | os.PathLike | Sequence[str],
    workdir: str | os.PathLike,
    config: RunConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """The whole pipeline (docs/method.md §1-8). Returns the metrics (also metrics.json).

    train_ids / eval_ids: list files or lists of ids. CAMs and random walks are made for both
    lists, the segmentation network's predictions for the eval list; affinity labels and the
    three networks use the training list only.

    A stage whose outputs in WORKDIR were made with other settings (its config record) is
    refused with the settings that differ (affext.records.ConfigChangedError); overwrite: that
    stage and every later one are deleted and redone instead.

    Under torchrun (affext.dist) every process calls it: the stages share the work, a barrier
    between them; rank 0 alone evaluates and writes metrics.json, the overview and the
    records, and every rank returns its metrics.
    """
    cfg = config or RunConfig.for_backbone("resnet38")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    train = _ids(train_ids)
    evals = _ids(eval_ids)
    progress = progress and dist.is_main()
    voc = _check_inputs(voc_root, cfg, train, evals)
    _redo_changed(work, cfg, overwrite)
    record_config(
        work,
        "run",
        cfg,
        {"voc_root": str(voc_root), "train_images": len(train), "eval_images": len(evals)},
    )
    times = run_stages(voc_root, train, evals, work, cfg, progress)
    if not dist.is_main():
        return dist.broadcast(None)
    try:
        metrics = _finish(voc_root, voc, evals, work, cfg, times, len(train), progress)
    except BaseException:
        dist.broadcast(None)  # the other ranks stop waiting; this rank raises
        raise
    return dist.broadcast(metrics)


def _finish(voc_root, voc, evals, work, cfg, times, train_images, progress) -> dict:
    """Rank 0's end of a run: the scores, metrics.json and the overview."""
    t = StageTimer()
    results = evaluate_outputs(
        voc_root,
        evals,
        work,
        cfg.make_rw.write_crf,
        progress,
        classes=cfg.classes,
        seg_crf=cfg.make_seg.write_crf,
    )
    times["eval"] = round(t.seconds, 2)
    metrics = _metrics(results, cfg, train_images, len(evals), times)
    # None when a resumed run found every label already written
    metrics["make_rw_images_per_s"] = load_throughput(stage("make_rw").output(work))["images_per_s"]
    t = StageTimer()
    write_overview(
        voc,
        evals[: cfg.overview_images],
        stage("make_cam").output(work, "cam"),
        stage("make_rw").output(work, "rw"),
        work / "overview.png",
        seg_dir=stage("make_seg").output(work, "seg"),
    )
    times["overview"] = round(t.seconds, 2)
    metrics["total_seconds"] = round(sum(times.values()), 2)
    atomic_write_json(work / "metrics.json", metrics)
    return metrics


def _check_inputs(
    voc_root: str | os.PathLike, cfg: RunConfig, train: list[str], evals: list[str]
) -> VOCDataset:
    """The dataset, once every id has an image and every eval id a ground-truth mask."""
    voc = VOCDataset(voc_root, cfg.label_source, cfg.cls_labels, cfg.classes)
    voc.check_ids(train + evals)
    if not voc.has_masks(evals):
        missing = [i for i in evals if voc.mask_path(i) is None][:3]
        raise FileNotFoundError(f"the eval list needs ground-truth masks; none for {missing}")
    # the dataset's classes: every image's labels and every eval mask, before the first stage
    image_labels(voc, list(dict.fromkeys(train + evals)))
    voc.check_masks(evals)
    return voc


def run_stages(
    voc_root: str | os.PathLike,
    train: list[str],
    evals: list[str],
    work: Path,
    cfg: RunConfig,
    progress: bool = True,
) -> dict[str, float]:
    """The stages of affext.stages.registry in order (train-cam -> make-cam -> make-aff-labels
    -> train-aff -> make-rw -> train-seg -> make-seg) in WORK; the seconds each took, by its
    command name. Each works on its `ids`: CAMs and walks on both lists, the segmentation
    network's predictions on the eval list, the rest on the training list."""
    ids = {"train": train, "eval": evals, "both": list(dict.fromkeys(train + evals))}
    times: dict[str, float] = {}
    for s in registry.STAGES:
        function = s.function
        if s.stage_root:  # init_from "train-cam" / "train-aff": that stage's network of this run
            function = functools.partial(function, stage_root=work)
        inputs = [stage(i.stage).output(work, i.sub) for i in s.inputs]
        out = s.output(work)
        with stage_time(out, s.command) as record:
            function(voc_root, ids[s.ids], *inputs, out, getattr(cfg, s.name), progress=progress)
            dist.barrier()  # the next stage reads every rank's outputs
        times[s.command] = record["seconds"]
    return times


STAGE_TIME_SUFFIX = ".seconds.json"


@contextlib.contextmanager
def stage_time(out_dir: str | os.PathLike, stage: str):
    """Time a stage into OUT_DIR/<stage>.seconds.json, kept with its outputs: {"seconds": the
    wall time of every invocation so far (a resumed one adds its part, an interrupted one
    too unless killed), "invocations"}. Yields that record, updated when the stage ends."""
    path = Path(out_dir) / f"{stage}{STAGE_TIME_SUFFIX}"
    record = {"stage": stage, "seconds": 0.0, "invocations": 0}
    if path.is_file():
        with contextlib.suppress(ValueError, OSError):
            record.update(json.loads(path.read_text()))
    t = StageTimer()
    try:
        yield record
    finally:
        record["seconds"] = round(float(record["seconds"]) + t.seconds, 2)
        record["invocations"] = int(record["invocations"]) + 1
        if dist.is_main() and Path(out_dir).is_dir():
            with contextlib.suppress(OSError):  # a time record never hides the stage's error
                atomic_write_json(path, record)


def _redo_changed(work: Path, cfg: RunConfig, overwrite: bool) -> None:
    """Refuse (ConfigChangedError) a run whose first stage with a config record unlike cfg's
    would otherwise reuse its outputs; with `overwrite`, delete that stage's folder and those
    of the later stages (which used its outputs), so that they are redone."""
    stages = registry.STAGES
    for i, s in enumerate(stages):
        if not config_changes(s.output(work), s.command, getattr(cfg, s.name)):
            continue
        if not overwrite:
            check_config(s.output(work), s.command, getattr(cfg, s.name))
        dist.barrier()  # every rank has checked before rank 0 deletes
        if dist.is_main():
            for later in stages[i:]:
                shutil.rmtree(later.output(work), ignore_errors=True)
        dist.barrier()
        return


def evaluate_outputs(
    voc_root: str | os.PathLike,
    evals: list[str],
    work: Path,
    with_crf: bool = True,
    progress: bool = True,
    classes: str | None = None,
    seg_crf: bool | None = None,
) -> dict[str, dict]:
    """Scores of the CAM, walk (and walk + CRF) labels, and of the segmentation network's
    predictions (see seg_crf), on the eval list; WORK/eval/*.json.
    classes: the dataset's classes file (None: its own, `VOCDataset`). seg_crf: None leaves
    the segmentation network out; False scores its predictions, True those and their dCRF
    refinement too."""
    left_out = set() if with_crf else {"rw_crf"}
    left_out |= {"seg", "seg_crf"} if seg_crf is None else set() if seg_crf else {"seg_crf"}
    folders = {
        name: s.output(work, sub)
        for s in registry.STAGES
        for name, sub in s.scored
        if name not in left_out
    }
    return {
        name: evaluate(
            voc_root,
            folder,
            evals,
            work / "eval" / f"{name}.json",
            EvalConfig(classes=classes),
            progress=progress,
        )
        for name, folder in folders.items()
    }


def _metrics(
    results: dict[str, dict],
    cfg: RunConfig,
    train_images: int,
    eval_images: int,
    times: dict[str, float],
) -> dict:
    metrics = {f"{k}_miou": v["miou"] for k, v in results.items()}
    metrics.update(
        {
            "eval_images": eval_images,
            "train_images": train_images,
            "backbone": cfg.backbone,
            "per_class_iou": {k: v["iou"] for k, v in results.items()},
            "precision": {k: v["mean_precision"] for k, v in results.items()},
            "recall": {k: v["mean_recall"] for k, v in results.items()},
            # each stage's own time, over every invocation (run_stages); eval and overview:
            # this run's. The same dict: the overview's time joins it later
            "stage_seconds": times,
        }
    )
    return metrics


__all__ = ["PRESETS", "RunConfig", "evaluate_outputs", "run", "run_stages", "write_overview"]
