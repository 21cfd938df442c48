"""Image transforms of psa's training and inference (numpy + PIL; each draws from an explicit
numpy Generator so a resumed epoch sees the same augmentation as an uninterrupted one)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, ImageNet mean and std (psa's normalisation)."""
    x = (np.asarray(image, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def to_long_side(image: Image.Image, long_side: int | None) -> Image.Image:
    """Resize (bicubic, up or down) so the long side is long_side; None: as is.

    The working size of the small presets: every stage sees the image at this size, and
    per-pixel outputs are brought back to the original size. Small images are enlarged so
    that a stride-8 network still has enough cells per object.
    """
    size = long_side_size(image.size, long_side)
    return image if size == image.size else image.resize(size, Image.BICUBIC)


def long_side_size(size: tuple[int, int], long_side: int | None) -> tuple[int, int]:
    """The (w, h) to_long_side gives an image of size (w, h)."""
    w, h = size
    if not long_side or max(w, h) == long_side:
        return w, h
    if long_side < 1:
        raise ValueError(f"long_side must be positive, got {long_side}")
    s = long_side / max(w, h)
    return max(1, int(round(w * s))), max(1, int(round(h * s)))


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) float maps resized bilinearly to size = (h, w)."""
    if maps.shape[1:] == tuple(size):
        return maps
    h, w = size
    return np.stack(
        [
            np.asarray(
                Image.fromarray(np.asarray(m, np.float32), "F").resize((w, h), Image.BILINEAR)
            )
            for m in maps
        ]
    )


def random_resize_long(
    image: Image.Image, low: int, high: int, rng: np.random.Generator
) -> Image.Image:
    """Resize so the long side is an integer drawn from [low, high] (bicubic), as psa."""
    target = int(rng.integers(low, high + 1))
    w, h = image.size
    if w < h:
        size = (max(1, int(round(w * target / h))), target)
    else:
        size = (target, max(1, int(round(h * target / w))))
    return image.resize(size, Image.BICUBIC)


def colour_jitter(
    image: Image.Image,
    rng: np.random.Generator,
    brightness: float = 0.3,
    contrast: float = 0.3,
    saturation: float = 0.3,
    hue: float = 0.1,
) -> Image.Image:
    """Brightness, contrast, saturation factors in [1-x, 1+x] and a hue shift in [-hue, hue]
    turns, applied in a random order (the usual ColorJitter semantics)."""
    ops = []
    if brightness > 0:
        f = rng.uniform(1 - brightness, 1 + brightness)
        ops.append(lambda im, f=f: ImageEnhance.Brightness(im).enhance(f))
    if contrast > 0:
        f = rng.uniform(1 - contrast, 1 + contrast)
        ops.append(lambda im, f=f: ImageEnhance.Contrast(im).enhance(f))
    if saturation > 0:
        f = rng.uniform(1 - saturation, 1 + saturation)
        ops.append(lambda im, f=f: ImageEnhance.Color(im).enhance(f))
    if hue > 0:
        shift = rng.uniform(-hue, hue)
        ops.append(lambda im, s=shift: _shift_hue(im, s))
    for k in rng.permutation(len(ops)):
        image = ops[k](image)
    return image


def _shift_hue(image: Image.Image, shift: float) -> Image.Image:
    hsv = np.array(image.convert("HSV"))
    # uint8 addition wraps around the hue circle, which is what a hue rotation is
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 255))) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def crop_box(
    height: int, width: int, size: int, rng: np.random.Generator
) -> tuple[slice, slice, slice, slice]:
    """psa's random crop: (dst_rows, dst_cols, src_rows, src_cols) of a size x size container;
    an image smaller than `size` lands at a random place in it, the rest stays empty."""

    def axis(n):
        if n > size:
            start = int(rng.integers(n - size + 1))
            return slice(0, size), slice(start, start + size)
        start = int(rng.integers(size - n + 1))
        return slice(start, start + n), slice(0, n)

    dst_r, src_r = axis(height)
    dst_c, src_c = axis(width)
    return dst_r, dst_c, src_r, src_c


def random_crop(
    arrays: list[np.ndarray], size: int, rng: np.random.Generator, fills: list[float] | None = None
) -> list[np.ndarray]:
    """Crop the same box out of (C, H, W) arrays into size x size containers (psa RandomCrop)."""
    h, w = arrays[0].shape[-2:]
    dst_r, dst_c, src_r, src_c = crop_box(h, w, size, rng)
    out = []
    for i, a in enumerate(arrays):
        fill = 0.0 if fills is None else fills[i]
        box = np.full(a.shape[:-2] + (size, size), fill, a.dtype)
        box[..., dst_r, dst_c] = a[..., src_r, src_c]
        out.append(box)
    return out


def pool_by(x: np.ndarray, k: int) -> np.ndarray:
    """(C, H, W) block mean over k x k cells; H and W must be multiples of k."""
    c, h, w = x.shape
    return x.reshape(c, h // k, k, w // k, k).mean(axis=(2, 4))
