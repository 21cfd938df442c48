"""The frame every per-image stage shares (make-cam, make-aff-labels, make-rw, make-seg and
`affext irn make-sem-seg-labels`): the device, the ids checked, the output folders, the
config record, the images still to do (shared out over the ranks), their DataLoader and the
progress bar. What a stage does with each image stays the stage's own."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .. import dist
from ..data.voc import VOCDataset
from ..records import record_config
from .common import die_with_parent, pending, resolve_device


class ImageStage:
    """One call of a per-image stage `name` (its config record's name) over `ids`.

    Made with the stage's config (its `device` and `num_workers`), the dataset (built once per
    call) and the outputs of an image: templates relative to OUT_DIR with "{}" for the id
    (e.g. "cam/{}.npy"). On creation: the device resolved, the ids checked against the
    dataset, then `inputs(ids)` (the stage's check of the files it reads), then the output
    folders made. `start` records the config and finds the images still to do; `loader` and
    `bar` then serve them.
    """

    def __init__(
        self,
        name: str,
        config: Any,
        voc: VOCDataset,
        ids: Sequence[str],
        out_dir: str | os.PathLike,
        outputs: Sequence[str],
        inputs: Callable[[list[str]], None] | None = None,
        desc: str | None = None,
    ):
        self.name, self.config, self.voc, self.desc = name, config, voc, desc or name
        self.device = resolve_device(config.device)
        self.ids = list(ids)
        voc.check_ids(self.ids)
        if inputs is not None:
            inputs(self.ids)
        self.out_dir = Path(out_dir)
        self.outputs = [self.out_dir / t for t in outputs]
        for template in self.outputs:
            template.parent.mkdir(parents=True, exist_ok=True)
        self.todo: list[str] = []

    def start(self, overwrite: bool = False, shard: bool = True, check: bool = True) -> list[str]:
        """Record the config in OUT_DIR (first refused, with check and without overwrite, when
        the outputs there were made with other settings) and return the ids whose outputs are
        not all there (every id with overwrite): this rank's share of them with `shard`, all
        of them without (a stage that shares out batches instead)."""
        record_config(self.out_dir, self.name, self.config, check=check and not overwrite)
        todo = pending(self.ids, self.outputs, overwrite)
        self.todo = dist.shard(todo) if shard else todo
        return self.todo

    def loader(self, dataset: Dataset, **kwargs) -> DataLoader:
        """A DataLoader over `dataset` (the images to do) in config.num_workers worker
        processes, none for a single image; kwargs: DataLoader's others."""
        workers = self.config.num_workers if len(self.todo) > 1 else 0
        return DataLoader(dataset, num_workers=workers, worker_init_fn=die_with_parent, **kwargs)

    def bar(self, progress: bool, iterable: Iterable | None = None) -> tqdm:
        """The stage's progress bar over every id, those finished before counted as done."""
        done = len(self.ids) - len(self.todo)
        return tqdm(
            iterable, total=len(self.ids), initial=done, desc=self.desc, disable=not progress
        )


class CamImages(Dataset):
    """Items of the images `ids`, each read with its CAM file from CAM_DIR (in DataLoader
    workers) by the subclass's item(image_id)."""

    def __init__(self, voc: VOCDataset, ids: Sequence[str], cam_dir: str | os.PathLike):
        self.voc, self.ids, self.cam_dir = voc, list(ids), Path(cam_dir)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        return self.item(self.ids[index])

    def item(self, image_id: str):
        raise NotImplementedError
