"""The dense CRF cases' inputs: a natural photo or a synthesised texture, and scores a dCRF
has work on (psa's la / ha CAM stacks or per-pixel probabilities), made from a seed."""

from __future__ import annotations

import numpy as np
import torch

CRF_SOURCES = ("photo", "texture")


def crf_texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 natural-looking image synthesised from a seed: irregular regions of
    flat colours (a Voronoi diagram with warped distances), smooth shading across the image,
    fine texture on some regions and sensor noise."""
    rng = np.random.default_rng(seed)
    cells = int(rng.integers(5, 10))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    warp = _smooth_field(rng, height, width, 2, scale=0.15 * max(height, width))
    centres = rng.uniform((0, 0), (height, width), (cells, 2))
    dist = (ys[None] + warp[0] - centres[:, :1, None]) ** 2 + (
        xs[None] + warp[1] - centres[:, 1:, None]
    ) ** 2
    region = dist.argmin(0)
    colours = rng.uniform(20, 235, (cells, 3))
    image = colours[region]
    image += _smooth_field(rng, height, width, 3, scale=25.0).transpose(1, 2, 0)
    textured = rng.random(cells) < 0.5
    image += textured[region][..., None] * rng.normal(0, 10, (height, width, 3))
    image += rng.normal(0, 3, (height, width, 3))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _smooth_field(rng: np.random.Generator, h: int, w: int, channels: int, scale: float):
    """(channels, h, w) smooth noise of about unit spread times `scale`, features ~h/4 wide."""
    coarse = torch.from_numpy(rng.normal(0, 1, (1, channels, 5, 5)))
    up = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
    return scale * up[0].numpy()


def crf_photo(height: int, width: int) -> np.ndarray | None:
    """(H, W, 3) uint8 natural photo: matplotlib's sample image grace_hopper.jpg (512x600,
    shipped with matplotlib, nothing downloaded), centre-cropped to the aspect ratio and
    resized (Lanczos); None where matplotlib or pillow is not installed."""
    try:
        from matplotlib import cbook
        from PIL import Image
    except ImportError:
        return None
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as photo:
        photo = photo.convert("RGB")
        pw, ph = photo.size
        scale = min(pw / width, ph / height)
        cw, ch = width * scale, height * scale
        box = ((pw - cw) / 2, (ph - ch) / 2, (pw + cw) / 2, (ph + ch) / 2)
        resized = photo.resize((width, height), Image.Resampling.LANCZOS, box=box)
    return np.asarray(resized, np.uint8).copy()


def crf_scores(
    image: np.ndarray, labels: int, seed: int = 0, kind: str = "cam", alpha: float = 4.0
) -> np.ndarray:
    """(labels, H, W) float32 scores that a dCRF has work on, for an (H, W, 3) uint8 image:
    the image's pixels split among `labels` colour prototypes (pixels picked at random), each
    label's mask blurred across its edges (sigma ~ a twelfth of the image) and noised.
    kind="cam": psa's la/ha stacks, channel 0 = (1 - max of the others)^alpha, the others
    CAM-like maps in [0, 1], not normalised; kind="probs": per-pixel probabilities over the
    labels (make-rw's rw_crf and make-seg's seg_crf)."""
    if kind not in ("cam", "probs"):
        raise ValueError(f"kind must be 'cam' or 'probs', got {kind!r}")
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    smooth = _blur(torch.from_numpy(image.astype(np.float64)).permute(2, 0, 1), 1.5)
    flat = smooth.reshape(3, -1)
    protos = flat[:, rng.choice(h * w, labels, replace=False)]
    region = ((flat[:, None, :] - protos[:, :, None]) ** 2).sum(0).argmin(0).reshape(h, w)
    onehot = torch.nn.functional.one_hot(region, labels).permute(2, 0, 1).double()
    soft = _blur(onehot, max(1.0, min(h, w) / 12))
    soft = soft * torch.from_numpy(rng.uniform(0.5, 1.0, (labels, 1, 1)))
    soft = (soft + torch.from_numpy(rng.normal(0, 0.1, (labels, h, w)))).clamp(0, 1)
    if kind == "probs":
        soft = torch.softmax(4 * soft, 0)
    elif labels > 1:
        soft[0] = (1 - soft[1:].max(0).values) ** alpha
    return soft.numpy().astype(np.float32)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(C, H, W) float64 Gaussian-like blur (separable taps, reflected borders); a wide one
    on a map average-pooled by sigma / 2 and upsampled again (bilinear), which is fast."""
    c, h, w = x.shape
    f = max(1, int(sigma / 2))
    y = torch.nn.functional.avg_pool2d(x[None], f, ceil_mode=True) if f > 1 else x[None]
    sigma = sigma / f
    r = min(max(1, int(3 * sigma)), y.shape[2] - 1, y.shape[3] - 1)
    if r >= 1:
        taps = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
        taps = taps / taps.sum()
        y = torch.nn.functional.pad(y, (r, r, r, r), mode="reflect")
        y = torch.nn.functional.conv2d(y, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        y = torch.nn.functional.conv2d(y, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    if f > 1:
        y = torch.nn.functional.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
    return y[0]


def dense_crf_inputs(
    height: int = 375,
    width: int = 500,
    labels: int = 3,
    seed: int = 0,
    source: str = "photo",
    kind: str = "cam",
) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, scores (labels, H, W) float32) for a dCRF: the sample photo
    (source="photo"; the synthesised texture where matplotlib is missing) or the texture of
    `seed` (source="texture"), and crf_scores of it."""
    if source not in CRF_SOURCES:
        raise ValueError(f"source must be one of {CRF_SOURCES}, got {source!r}")
    image = crf_photo(height, width) if source == "photo" else None
    if image is None:
        image = crf_texture(height, width, seed)
    return image, crf_scores(image, labels, seed, kind)


def crf_batch(
    height: int = 375,
    width: int = 500,
    labels: int = 3,
    batch: int = 1,
    pair: bool = False,
    kind: str = "cam",
) -> tuple[np.ndarray, np.ndarray]:
    """(images (B, H, W, 3) uint8, scores (B, labels, H, W) float32) of the dCRF cases: image
    0 the sample photo, the others textures (seeds 1 ..); pair=True: psa's la and ha stacks
    of the photo (background (1 - max CAM)^alpha with alpha 4 and 32, B = 2)."""
    if pair:
        image, la = dense_crf_inputs(height, width, labels, 0, "photo", "cam")
        ha = la.copy()
        if labels > 1:
            ha[0] = (1 - la[1:].max(0)) ** 32
        return np.stack([image, image]), np.stack([la, ha])
    pairs = [
        dense_crf_inputs(height, width, labels, i, "photo" if i == 0 else "texture", kind)
        for i in range(batch)
    ]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
