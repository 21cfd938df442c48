"""The stages' dense CRF (docs/method.md §2, psa's settings) and where it runs.

Two backends give the same marginals (to a few 1e-6 in float32): "affext" (the default),
affext.dense_crf in the stage's own process on its device, every stack of an image in one
batched call; and "pydensecrf", the reference (the crf-reference extra), single-threaded and
holding the GIL through its inference, so the stages run it in processes: CRFPool, the one
pool of them, whose processes run numpy and pydensecrf only (never torch: a forked process of
a threaded one can hang in it), and hand the marginals back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.datasets import argmax_at_size
from ..extras import require
from ..workers import pool_process_init, process_context

CRF_BACKENDS = ("affext", "pydensecrf")


@dataclass
class CRFConfig:
    iterations: int = 10
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0
    # "affext": affext.dense_crf on the stage's device, in its process; "pydensecrf": the
    # reference, in crf_workers processes. A speed setting like `device`, not an output one
    # (records.NON_OUTPUT_SETTINGS): the two agree to a few 1e-6 in the marginals, so a work
    # directory resumes under either (and one recorded before the setting existed does).
    backend: str = "affext"

    def __post_init__(self) -> None:
        if self.backend not in CRF_BACKENDS:
            raise ValueError(
                f"crf backend must be one of {', '.join(map(repr, CRF_BACKENDS))}, "
                f"got {self.backend!r}"
            )


def require_backend(config: CRFConfig) -> None:
    """Raise MissingExtraError, before any work, where the backend's library is missing."""
    if config.backend == "pydensecrf":
        require("crf backend 'pydensecrf'", ("pydensecrf",))


def crf_inference(
    image: np.ndarray | torch.Tensor,
    scores: np.ndarray | torch.Tensor,
    config: CRFConfig | None = None,
) -> np.ndarray | torch.Tensor:
    """Mean-field dense CRF on an RGB image, with config's backend.

    Args:
        image: (H, W, 3) uint8 RGB (a numpy one goes to the scores' device).
        scores: (n, H, W), or (B, n, H, W) for B stacks on the same image (psa's la and ha:
            with the affext backend its lattices are built once), non-negative, one channel
            per label; the unary is -log(scores) as psa passes them (not normalised).
    Returns:
        float32 marginals of scores' shape: a numpy array for numpy scores, else a tensor on
        the scores' device.
    """
    cfg = config or CRFConfig()
    params = dict(
        iterations=cfg.iterations,
        gaussian_sxy=cfg.gaussian_sxy,
        gaussian_compat=cfg.gaussian_compat,
        bilateral_sxy=cfg.bilateral_sxy,
        bilateral_srgb=cfg.bilateral_srgb,
        bilateral_compat=cfg.bilateral_compat,
    )
    if cfg.backend == "affext":
        from ..ops.dense_crf import dense_crf

        if isinstance(image, np.ndarray) and not image.flags.writeable:
            image = image.copy()  # a decoded image is read-only; torch wants a writable one
        return dense_crf(image, scores, **params)
    require_backend(cfg)
    on = scores.device if isinstance(scores, torch.Tensor) else None
    image = image.cpu().numpy() if isinstance(image, torch.Tensor) else image
    stacks = scores.detach().cpu().numpy() if on is not None else np.asarray(scores)
    if stacks.ndim == 4:
        out = np.stack([_pydensecrf(image, s, params) for s in stacks])
    else:
        out = _pydensecrf(image, stacks, params)
    return out if on is None else torch.from_numpy(out).to(on)


def _pydensecrf(image: np.ndarray, scores: np.ndarray, params: dict) -> np.ndarray:
    """pydensecrf's DenseCRF2D of one (n, H, W) stack: (n, H, W) float32 marginals."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    image = np.array(image, dtype=np.uint8, order="C")  # pydensecrf needs a writable buffer
    h, w = image.shape[:2]
    scores = np.asarray(scores, np.float32)
    if scores.ndim != 3 or scores.shape[1:] != (h, w):
        raise ValueError(f"scores must have shape (n, {h}, {w}), got {scores.shape}")
    n = scores.shape[0]
    if n < 2:
        # one label: nothing to decide
        return np.ones_like(scores)
    crf = dcrf.DenseCRF2D(w, h, n)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(scores)))
    crf.addPairwiseGaussian(sxy=params["gaussian_sxy"], compat=params["gaussian_compat"])
    crf.addPairwiseBilateral(
        sxy=params["bilateral_sxy"],
        srgb=params["bilateral_srgb"],
        rgbim=image,
        compat=params["bilateral_compat"],
    )
    q = crf.inference(params["iterations"])
    return np.asarray(q, np.float32).reshape(n, h, w)


def refined_index(
    refined: np.ndarray | torch.Tensor, size: tuple[int, int] | None = None
) -> np.ndarray:
    """(h, w) uint8 argmax over the (n, h, w) marginals (on any device); (H, W) for a larger
    `size`, the marginals upsampled in bands (argmax_at_size: no (n, H, W) array)."""
    if size is not None and tuple(size) != tuple(refined.shape[1:]):
        if isinstance(refined, torch.Tensor):
            refined = refined.cpu()
        return argmax_at_size(refined, size)
    if isinstance(refined, torch.Tensor):
        return refined.argmax(dim=0).to(torch.uint8).cpu().numpy()
    return np.argmax(refined, axis=0).astype(np.uint8)


def normalized(scores: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Scores clipped at 0 and divided by their per-pixel sum (at least 1e-5) over axis 0:
    the walked scores as the dCRF of rw_crf takes them."""
    if isinstance(scores, torch.Tensor):
        sub = scores.clamp(min=0.0)
        return sub / sub.sum(dim=0, keepdim=True).clamp(min=1e-5)
    sub = np.maximum(scores, 0.0)
    return sub / np.maximum(sub.sum(axis=0, keepdims=True), 1e-5)


def default_crf_workers() -> int:
    """dCRF processes: half the cores (the rest read images and drive the device), 1 to 8."""
    return max(1, min(8, (os.cpu_count() or 1) // 2))


# The dCRF's processes: forked (they run numpy and pydensecrf only, never torch, and hand the
# marginals back) and dying with their parent; the one definition is affext.workers'.
crf_process_context = process_context
crf_process_init = pool_process_init


class CRFPool:
    """Where a stage's dCRF jobs run: `workers` processes for the pydensecrf backend (it
    holds the GIL), else (the affext backend, or workers 0) the calling thread.

    `submit` blocks while `limit` jobs are in flight (memory stays bounded however slow the
    dCRF is), raises the first error of a finished job and hands each result to `on_done`
    in the calling thread; `call` runs one job and returns its result (for a thread that
    waits on it); `close` waits for the rest, or on an error or Ctrl-C drops the jobs not
    started (none is half-written), and leaves no process behind. Raises MissingExtraError
    for the pydensecrf backend without pydensecrf.
    """

    def __init__(
        self,
        config: CRFConfig,
        workers: int,
        limit: int | None = None,
        on_done: Callable[[Any], None] | None = None,
    ):
        require_backend(config)
        self.workers = workers if config.backend == "pydensecrf" else 0
        self.limit = max(1, limit if limit is not None else 2 * self.workers)
        self.on_done = on_done or (lambda _: None)
        self.in_flight: set[Future] = set()
        self.executor = None
        if self.workers > 0:
            self.executor = ProcessPoolExecutor(
                self.workers, mp_context=crf_process_context(), initializer=crf_process_init
            )
            for _ in range(self.workers):  # start them all now, before any loader's threads
                self.executor.submit(int)

    def submit(self, fn: Callable, *args) -> None:
        if self.executor is None:
            self.on_done(fn(*args))
            return
        while len(self.in_flight) >= self.limit:
            self._reap(wait_futures(self.in_flight, return_when=FIRST_COMPLETED).done)
        self._reap({f for f in self.in_flight if f.done()})
        self.in_flight.add(self.executor.submit(fn, *args))

    def call(self, fn: Callable, *args) -> Any:
        return fn(*args) if self.executor is None else self.executor.submit(fn, *args).result()

    def _reap(self, done: Sequence[Future] | set[Future]) -> None:
        for future in done:
            self.in_flight.discard(future)
            self.on_done(future.result())  # raises the job's error

    def close(self, cancel: bool = False) -> None:
        try:
            if not cancel:
                while self.in_flight:
                    self._reap(wait_futures(self.in_flight, return_when=FIRST_COMPLETED).done)
        finally:
            if self.executor is not None:
                self.executor.shutdown(wait=True, cancel_futures=True)
