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
(atomic writes) for a rerun to skip.
"""

from __future__ import annotations

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
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .. import dist
from ..data.datasets import argmax_at_size, kept_size, load_cam, load_working_image
from ..data.transforms import long_side_size, normalize, pool_by, resize_maps
from ..data.voc import VOCDataset, save_label_png
from ..files import atomic_write_json, record_config
from .common import (
    background_score,
    cam_stack,
    default_workers,
    die_with_parent,
    pending,
    require_cams,
    resolve_device,
)
from .crf import (
    CRFConfig,
    CRFPool,
    crf_inference,
    default_crf_workers,
    normalized,
    refined_index,
    require_backend,
)
from .train_aff import load_aff_net

STRIDE = 8
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


def padded(n: int) -> int:
    return -(-n // STRIDE) * STRIDE


class _RwDataset(Dataset):
    """Items: (id, image (3, Hp, Wp) zero-padded, cams (C + 1, Hp/8, Wp/8), working (h, w),
    present classes, RGB for the dCRF at kept_size (the original (H, W, 3), or the working
    size's for an image larger than that), original (H, W))."""

    def __init__(
        self,
        voc: VOCDataset,
        ids: Sequence[str],
        cam_dir: Path,
        alpha: float,
        long_side: int | None = None,
    ):
        self.voc, self.ids, self.cam_dir, self.alpha = voc, list(ids), cam_dir, alpha
        self.long_side = long_side

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        pil, original = load_working_image(self.voc, image_id, self.long_side)
        work = np.asarray(pil)
        h, w = work.shape[:2]
        keep = kept_size(original, self.long_side)
        rgb = np.asarray(self.voc.load_pil(image_id)) if keep != (h, w) else work
        path = self.cam_dir / f"{image_id}.npy"
        cam = load_cam(self.voc, path, image_id, original)
        cam_size = next((np.shape(v) for v in cam.values()), (h, w))
        fg = resize_maps(cam_stack(cam, cam_size, self.voc.num_classes), (h, w))
        # docs/method.md §5: [M_bg (alpha); M_1..M_C], zero-padded, pooled by 8
        scores = np.concatenate([background_score(fg, self.alpha)[None], fg])
        hp, wp = padded(h), padded(w)
        x = np.zeros((3, hp, wp), np.float32)
        x[:, :h, :w] = normalize(work)
        full = np.zeros((self.voc.num_classes + 1, hp, wp), np.float32)
        full[:, :h, :w] = scores
        present = sorted(int(k) + 1 for k in cam)
        return (
            image_id,
            torch.from_numpy(x),
            torch.from_numpy(pool_by(full, STRIDE)),
            (h, w),
            present,
            rgb,
            original,
        )


def _collate(items):
    ids, xs, cams, sizes, present, rgbs, originals = zip(*items)
    batch = list(ids), torch.stack(xs), torch.stack(cams), list(sizes), list(present), list(rgbs)
    return (*batch, list(originals))


def _size_batches(
    voc: VOCDataset, ids: Sequence[str], batch_size: int, long_side: int | None
) -> list[list[int]]:
    """Index batches of images with the same padded working size (from the file headers).

    Every image of one size is grouped wherever it stands in `ids`, so at most one batch per
    size is not full; a size's batches follow one another, so the device sees one shape for
    a run of batches.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for n, size in enumerate(voc.image_sizes(ids)):  # the headers, in processes for many
        w, h = long_side_size(size, long_side)
        groups.setdefault((padded(h), padded(w)), []).append(n)
    return [
        members[i : i + batch_size]
        for members in groups.values()
        for i in range(0, len(members), batch_size)
    ]


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


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """A copy in pinned host memory, queued on the current stream (no wait) for a CUDA t."""
    if t.device.type == "cpu":
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return host.copy_(t, non_blocking=True)


def walk_batch(
    model: torch.nn.Module,
    x: torch.Tensor,
    cams: torch.Tensor,
    cfg: MakeRwConfig,
) -> torch.Tensor:
    """AffinityNet and the walk of one batch on the model's device, upsampled to the padded
    image size (docs/method.md §5): x (B, 3, Hp, Wp), cams (B, C + 1, Hp/8, Wp/8) ->
    (B, C + 1, Hp, Wp) scores."""
    from .. import random_walk

    aff = model.affinity(x, cfg.radius)
    if aff.shape[-2:] != cams.shape[-2:]:
        raise ValueError(
            f"AffinityNet gives a {tuple(aff.shape[-2:])} map for a "
            f"{tuple(x.shape[-2:])} image; the stride must be {STRIDE}"
        )
    walked = random_walk(
        cams,
        aff.to(cams.dtype),
        beta=cfg.beta,
        iterations=cfg.iterations,
        radius=cfg.radius,
        region=cfg.region,
    )
    return F.interpolate(walked, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _image_scores(
    walked: torch.Tensor, j: int, size: tuple[int, int], full_size: tuple[int, int]
) -> tuple[torch.Tensor, bool]:
    """Image j's (C + 1, H, W) walked scores cropped to its working (h, w) `size` and brought
    to its original `full_size`; where that is larger than the working size, (the scores at
    the working size, True)."""
    h, w = size
    scores = walked[j : j + 1, :, :h, :w]
    if max(full_size) > max(h, w):
        return scores[0], True
    if (h, w) != tuple(full_size):  # a working size above the original: back to it
        scores = F.interpolate(scores, size=tuple(full_size), mode="bilinear", align_corners=False)
    return scores[0], False


def labels_to_host(
    walked: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    full_sizes: Sequence[tuple[int, int]],
    present: Sequence[Sequence[int]] | None,
    with_scores: bool = True,
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Per image: crop walk_batch's scores to its working size (h, w), bring them to its
    original size, and queue the copies of its label (argmax over the C + 1 classes) and, where
    `present` is given and with_scores, of the scores of [bg; present] to the host. Returns
    (label (H, W) uint8, scores or None) per image; from a GPU, valid once the stream has
    reached here.

    An image whose original size is larger than its working size gets (None, the scores of
    [bg; present] at the working size): the host makes its label at the original size in
    bands (argmax_at_size; absent classes, exactly 0, never win), so that no full-size float
    array exists."""
    out = []
    for j, size in enumerate(sizes):
        scores, large = _image_scores(walked, j, size, full_sizes[j])
        if large:
            keys = (0, *present[j]) if present is not None else range(walked.shape[1])
            out.append((None, _to_host(torch.stack([scores[k] for k in keys]))))
            continue
        label = _to_host(scores.argmax(dim=0).to(torch.uint8))
        sub = None
        if present is not None and with_scores:  # slices, not an index tensor: no host copy
            sub = _to_host(torch.stack([scores[k] for k in (0, *present[j])]))
        out.append((label, sub))
    return out


def crf_labels(
    walked: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    full_sizes: Sequence[tuple[int, int]],
    present: Sequence[Sequence[int]],
    rgbs: Sequence[np.ndarray],
    crf: CRFConfig,
) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
    """rw_crf on the walked scores' device (the affext backend): per image the dCRF of its
    normalised scores of keys = [bg; present] (as labels_to_host sizes them) on its RGB, and
    the copy of the result to the host queued: (index into keys (H, W) uint8, None), or for
    an image larger than its working size (None, the marginals at the working size), which
    the host brings to the original size in bands."""
    out = []
    for j, size in enumerate(sizes):
        scores, large = _image_scores(walked, j, size, full_sizes[j])
        sub = normalized(torch.stack([scores[k] for k in (0, *present[j])]))
        refined = crf_inference(rgbs[j], sub, crf)
        if large:
            out.append((None, _to_host(refined)))
        else:
            out.append((_to_host(refined.argmax(dim=0).to(torch.uint8)), None))
    return out


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
    device = resolve_device(cfg.device)
    if cfg.write_crf:
        require_backend(cfg.crf)
    voc = VOCDataset(voc_root, cfg.label_source, cfg.cls_labels, cfg.classes)
    voc.check_ids(ids)
    cam_dir, out_dir = Path(cam_dir), Path(out_dir)
    require_cams(cam_dir, ids)
    rw_dir, crf_dir = out_dir / "rw", out_dir / "rw_crf"
    rw_dir.mkdir(parents=True, exist_ok=True)
    outputs = [rw_dir / "{}.png"]
    if cfg.write_crf:
        crf_dir.mkdir(parents=True, exist_ok=True)
        outputs.append(crf_dir / "{}.png")
    model = load_aff_net(aff_net_dir, cfg.backbone, device)
    record_config(out_dir, "make-rw", cfg, check=not overwrite)
    todo = pending(ids, outputs, overwrite)
    # whole batches per rank: each image is walked in the batch one process would use
    batches = dist.shard(_size_batches(voc, todo, cfg.batch_size, cfg.long_side))
    loader = DataLoader(
        _RwDataset(voc, todo, cam_dir, cfg.alpha, cfg.long_side),
        batch_sampler=batches,
        collate_fn=_collate,
        num_workers=cfg.num_workers if len(todo) > 1 else 0,
        pin_memory=device.type == "cuda",
        worker_init_fn=die_with_parent,
    )
    bar = tqdm(total=len(ids), initial=len(ids) - len(todo), desc="make-rw", disable=not progress)
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
