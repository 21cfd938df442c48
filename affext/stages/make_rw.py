"""Stage `make-rw`: random walk of the CAMs with AffinityNet's affinities (docs/method.md §5).

OUT/rw/<id>.png: the pseudo label (VOC palette); OUT/rw_crf/<id>.png: the same scores refined
by the dense CRF (docs/method.md §2's settings) over the background and the image's classes;
OUT/make-rw.throughput.json: images, seconds and images/s of the last run.

A pipeline, so that the device never waits for the CPU work: DataLoader workers read and
prepare the images; the calling thread runs AffinityNet and the walk on batches of images
whose padded sizes are equal (and, with the affext dCRF backend, each image's dCRF on the same
device), and copies each image's labels (and scores) to the host (asynchronously from a GPU);
a few threads write the PNGs while the next batch runs. With the pydensecrf backend the dCRF
runs on the host, in processes of its own (crf.CRFPool), as pydensecrf holds the GIL through
its inference. At most `_pending_limit` images are between the device and their files; the
first error in any of them stops the stage, and so does Ctrl-C, leaving only complete files
(atomic writes) for a rerun to skip. The reading, the batches and the device's half are
affext.stages.rw_batches'; the host's half (`_Finisher`) and the stage are here.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import dist
from ..data.datasets import argmax_at_size
from ..data.voc import VOCDataset, save_label_png
from ..files import atomic_write_json
from ..models.trained import load_aff_net
from .cams import require_cams
from .common import default_workers
from .crf import (
    CRFConfig,
    CRFPool,
    crf_inference,
    default_crf_workers,
    normalized,
    refined_index,
    require_backend,
)
from .runner import ImageStage
from .rw_batches import (  # noqa: F401 - STRIDE, padded: this module's names before the split
    STRIDE,
    _collate,
    _RwDataset,
    _size_batches,
    crf_labels,
    labels_to_host,
    padded,
    walk_batch,
)

THROUGHPUT_FILE = "make-rw.throughput.json"


@dataclass
class MakeRwConfig:
    """psa infer_aff defaults: alpha 16, beta 8, logt 8 (t = 256)."""

    backbone: str = "resnet38"
    alpha: float = 16.0
    beta: float = 8.0
    iterations: int = 256
    radius: int = 5
    region: str = "psa"
    batch_size: int = 8
    crf: CRFConfig = field(default_factory=CRFConfig)
    write_crf: bool = True
    long_side: int | None = None  # working size: long side resized to this (None: as is)
    num_workers: int = default_workers()
    crf_workers: int = default_crf_workers()  # pydensecrf processes; 0: in a thread (slow)
    device: str = "auto"
    label_source: str = "auto"  # the image-level labels the CAMs' classes are checked against
    cls_labels: str | None = None
    classes: str | None = None  # classes file ("voc": VOC's 20); None: the dataset's


@dataclass
class _Walked:
    """One image's results on the host, valid once `ready` (the copy's CUDA event, or None)
    has completed: its label (H, W) uint8 and, for a dCRF on the host, the walked scores of
    keys = [bg; present classes] (len(keys), H, W) float32; or the dCRF's result made on the
    device (crf_labels): its index into keys (H, W) uint8, or for a large image its
    marginals at the working size."""

    image_id: str
    label: torch.Tensor | None  # None: made on the host from scores at `size` (a large image)
    keys: list[int]
    scores: torch.Tensor | None
    rgb: np.ndarray
    ready: torch.cuda.Event | None
    size: tuple[int, int] | None = None  # the original (H, W) where larger than the scores
    crf_index: torch.Tensor | None = None
    crf_marginals: torch.Tensor | None = None


class _Finisher:
    """The host half of the stage: write each walked image's PNGs off the device's thread.

    Threads wait for an image's copy and write rw/<id>.png and rw_crf/<id>.png, the latter
    from the device's dCRF result, or made here by the pydensecrf pool (its processes, or
    the thread where it has none). `submit` blocks while `limit` images are in flight, so
    memory stays bounded however slow the CPU side is, and raises the first error of a
    finished image; `close` waits for the rest (or, on an error or Ctrl-C, cancels what has
    not started) and leaves no thread or process behind.
    """

    def __init__(
        self,
        rw_dir: Path,
        crf_dir: Path | None,
        crf: CRFConfig,
        pool: CRFPool | None,
        limit: int,
        on_done: Callable[[], None],
    ):
        self.rw_dir, self.crf_dir, self.crf, self.limit = rw_dir, crf_dir, crf, max(1, limit)
        self.pool, self.on_done = pool, on_done
        threads = pool.workers + 1 if pool is not None and pool.workers else 2
        self.threads = ThreadPoolExecutor(threads, thread_name_prefix="make-rw")
        self.in_flight: set[Future] = set()

    def submit(self, item: _Walked) -> None:
        while len(self.in_flight) >= self.limit:
            self._reap(wait_futures(self.in_flight, return_when=FIRST_COMPLETED).done)
        self._reap({f for f in self.in_flight if f.done()})
        self.in_flight.add(self.threads.submit(self._finish, item))

    def _reap(self, done: set[Future]) -> None:
        for future in done:
            self.in_flight.discard(future)
            future.result()  # raises the image's error
            self.on_done()

    def _finish(self, item: _Walked) -> None:
        try:
            if item.ready is not None:
                item.ready.synchronize()
            keys = np.asarray(item.keys, np.uint8)
            if item.label is None:
                label = keys[argmax_at_size(item.scores, item.size)]
            else:
                label = item.label.numpy()
            save_label_png(self.rw_dir / f"{item.image_id}.png", label)
            if self.crf_dir is None:
                return
            path = self.crf_dir / f"{item.image_id}.png"
            if item.crf_index is not None:
                save_label_png(path, keys[item.crf_index.numpy()])
            elif item.crf_marginals is not None:
                save_label_png(path, keys[argmax_at_size(item.crf_marginals, item.size)])
            else:  # pydensecrf: its marginals from the pool, their labels made here
                scores = normalized(item.scores.numpy())
                refined = self.pool.call(crf_inference, item.rgb, scores, self.crf)
                save_label_png(path, keys[refined_index(refined, item.size)])
        except Exception as exc:
            # the error keeps its type (an OSError stays one, for the CLI's message)
            if hasattr(exc, "add_note"):  # Python >= 3.11
                exc.add_note(f"make-rw failed on image {item.image_id!r}")
            raise

    def close(self, cancel: bool) -> None:
        try:
            if not cancel:
                while self.in_flight:
                    self._reap(wait_futures(self.in_flight, return_when=FIRST_COMPLETED).done)
        finally:
            # on an error or Ctrl-C: images not started are dropped (none is half-written)
            self.threads.shutdown(wait=False, cancel_futures=True)
            if self.pool is not None:
                self.pool.close(cancel=True)
            self.threads.shutdown(wait=True)


def _pending_limit(cfg: MakeRwConfig, crf_processes: int) -> int:
    """Images between the device and their files: enough to keep every dCRF process and the
    next batch busy (a few MB each at VOC's size)."""
    return 2 * max(cfg.batch_size, crf_processes, 1)


def load_throughput(out_dir: str | os.PathLike) -> dict:
    """The record make_rw writes to OUT_DIR/make-rw.throughput.json: {"images", "seconds",
    "images_per_s", "processes", "device", "batch_size", "batches", "crf", "crf_backend",
    "crf_workers"} (crf_workers: the pydensecrf processes, 0 in-process)."""
    path = Path(out_dir) / THROUGHPUT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no make-rw record {str(path)!r}: run make-rw into that folder")
    return json.loads(path.read_text())


def make_rw(
    voc_root: str | os.PathLike,
    ids: Sequence[str],
    cam_dir: str | os.PathLike,
    aff_net_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: MakeRwConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write OUT_DIR/rw/<id>.png (and rw_crf/) for every id; existing ones are kept.

    Also writes OUT_DIR/make-rw.throughput.json (`load_throughput`): the images done in this
    call and their images/s, from the first batch read to the last file written.
    """
    cfg = config or MakeRwConfig()
    if cfg.write_crf:
        require_backend(cfg.crf)
    voc = VOCDataset(voc_root, cfg.label_source, cfg.cls_labels, cfg.classes)
    cam_dir = Path(cam_dir)
    outputs = ["rw/{}.png"] + (["rw_crf/{}.png"] if cfg.write_crf else [])
    run = ImageStage(
        "make-rw", cfg, voc, ids, out_dir, outputs, inputs=functools.partial(require_cams, cam_dir)
    )
    device, out_dir = run.device, run.out_dir
    rw_dir, crf_dir = out_dir / "rw", out_dir / "rw_crf"
    model = load_aff_net(aff_net_dir, cfg.backbone, device)
    todo = run.start(overwrite, shard=False)
    # whole batches per rank: each image is walked in the batch one process would use
    batches = dist.shard(_size_batches(voc, todo, cfg.batch_size, cfg.long_side))
    loader = run.loader(
        _RwDataset(voc, todo, cam_dir, cfg.alpha, cfg.long_side),
        batch_sampler=batches,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    bar = run.bar(progress)
    start = time.perf_counter()
    done = 0

    def count() -> None:
        nonlocal done
        done += 1
        bar.update()
        bar.set_postfix_str(f"{done / (time.perf_counter() - start):.2f} images/s", refresh=False)

    # rw_crf: affext's dCRF in the loop below on the device, or pydensecrf's on the host
    pool = CRFPool(cfg.crf, cfg.crf_workers if todo else 0) if cfg.write_crf else None
    on_device = pool is not None and cfg.crf.backend == "affext"
    crf_processes = pool.workers if pool is not None else 0
    finisher = _Finisher(
        rw_dir,
        crf_dir if cfg.write_crf else None,
        cfg.crf,
        pool,
        _pending_limit(cfg, crf_processes),
        count,
    )
    failed = True
    try:
        with torch.inference_mode():
            for batch_ids, x, cams, sizes, present, rgbs, originals in loader:
                x = x.to(device, non_blocking=True)
                cams = cams.to(device, non_blocking=True)
                walked = walk_batch(model, x, cams, cfg)
                host = labels_to_host(walked, sizes, originals, present, not on_device)
                refined = [(None, None)] * len(host)
                if on_device:
                    refined = crf_labels(walked, sizes, originals, present, rgbs, cfg.crf)
                ready = None
                if device.type == "cuda":
                    ready = torch.cuda.Event()
                    ready.record()
                for j, (label, scores) in enumerate(host):
                    keys = [0, *present[j]]
                    size = tuple(originals[j]) if label is None else None
                    item = _Walked(
                        batch_ids[j], label, keys, scores, rgbs[j], ready, size, *refined[j]
                    )
                    finisher.submit(item)
        failed = False
    finally:
        try:
            finisher.close(cancel=failed)
        finally:
            bar.close()
    # every rank's share: the images of all, in the time of the slowest
    shares = dist.gather((done, time.perf_counter() - start, len(batches)))
    done = sum(d for d, _, _ in shares)
    seconds = max(s for _, s, _ in shares)
    record = {
        "images": done,
        "seconds": round(seconds, 3),
        "images_per_s": round(done / seconds, 3) if done else None,
        "processes": len(shares),
        "device": str(device),
        "batch_size": cfg.batch_size,
        "batches": sum(b for _, _, b in shares),
        "crf": cfg.write_crf,
        "crf_backend": cfg.crf.backend if cfg.write_crf else None,
        "crf_workers": crf_processes,
    }
    if dist.is_main():
        atomic_write_json(out_dir / THROUGHPUT_FILE, record)
    if progress and done and dist.is_main():
        print(
            f"make-rw: {done} images in {seconds:.1f} s, {done / seconds:.2f} images/s "
            f"({device}, {record['batches']} batches, {len(shares)} processes)",
            file=sys.stderr,
        )
    return out_dir
