"""Dense CRF refinement with psa's settings (docs/method.md §2), through pydensecrf, and
the processes that run it for make-rw and make-seg (pydensecrf holds the GIL)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..extras import require
from ..workers import pool_process_init, process_context


@dataclass
class CRFConfig:
    iterations: int = 10
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0


def crf_inference(
    image: np.ndarray, scores: np.ndarray, config: CRFConfig | None = None
) -> np.ndarray:
    """Mean-field dense CRF on an RGB image.

    Args:
        image: (H, W, 3) uint8 RGB.
        scores: (n, H, W) non-negative scores, one channel per label; the unary is
            -log(scores) as psa passes them (not normalised over channels).
    Returns:
        (n, H, W) float32 marginals.
    """
    require("the dense CRF", ("pydensecrf",))
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    cfg = config or CRFConfig()
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
    crf.addPairwiseGaussian(sxy=cfg.gaussian_sxy, compat=cfg.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=cfg.bilateral_sxy, srgb=cfg.bilateral_srgb, rgbim=image, compat=cfg.bilateral_compat
    )
    q = crf.inference(cfg.iterations)
    return np.asarray(q, np.float32).reshape(n, h, w)


def default_crf_workers() -> int:
    """dCRF processes: half the cores (the rest read images and drive the device), 1 to 8."""
    return max(1, min(8, (os.cpu_count() or 1) // 2))


# The dCRF's processes: forked (they run numpy, pydensecrf and PIL only) and dying with
# their parent; the one definition is affext.workers'.
crf_process_context = process_context
crf_process_init = pool_process_init
