"""make-rw's device side: the images read in batches of one padded working size,
AffinityNet and the walk on each batch, and each image's labels (and scores, or the device's
dCRF result) queued for the copy to the host (docs/method.md §5). The host side, which waits
for the copies and writes the PNGs, is affext.stages.make_rw's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..data.datasets import kept_size, load_cam, load_working_image
from ..data.transforms import long_side_size, normalize, pool_by, resize_maps
from ..data.voc import VOCDataset
from .cams import background_score, cam_stack
from .crf import CRFConfig, crf_inference, normalized
from .runner import CamImages

if TYPE_CHECKING:
    from .make_rw import MakeRwConfig

STRIDE = 8


def padded(n: int) -> int:
    return -(-n // STRIDE) * STRIDE


class _RwDataset(CamImages):
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
        super().__init__(voc, ids, cam_dir)
        self.alpha, self.long_side = alpha, long_side

    def item(self, image_id: str):
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
