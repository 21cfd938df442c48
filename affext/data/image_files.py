"""Image files read and written without decoding more than needed: VOC palette PNGs (class
maps) and the sizes in image headers."""

from __future__ import annotations

import functools
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import atomic_save
from .classes import DatasetError


def voc_palette() -> list[int]:
    """The VOC colour map as a flat list of 768 ints (256 RGB triplets) for PIL's putpalette.

    Colour of index i: its bits 0, 1, 2 go to the top bits of R, G, B, then bits 3, 4, 5 to
    the next bits, and so on; 255 (void) comes out as (224, 224, 192).
    """
    return list(_palette())


@functools.cache
def _palette() -> tuple[int, ...]:
    """voc_palette's values, made once (every label PNG written carries them)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return tuple(palette)


def save_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write an (H, W) uint8 class map as a VOC palette PNG, atomically."""
    image = Image.fromarray(np.asarray(label, np.uint8), mode="P")
    image.putpalette(voc_palette())
    atomic_save(path, lambda f: image.save(f, format="PNG"))


def load_label_png(path: str | os.PathLike) -> np.ndarray:
    """(H, W) uint8 class map from a palette PNG (indices) or a grey PNG (values)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise DatasetError(f"cannot read class map {str(path)!r}: {exc}") from exc
    plain = _plain_png(data)
    if plain is not None:
        return plain
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode in ("P", "L"):
                return np.array(image, np.uint8)
            if image.mode in ("I", "I;16"):
                return np.array(image).astype(np.uint8)
            raise DatasetError(
                f"{str(path)!r} is a {image.mode} image; a class map must be a "
                "palette (P) or grey (L) PNG"
            )
    except (OSError, SyntaxError) as exc:
        raise DatasetError(f"cannot decode class map {str(path)!r}: {exc}") from exc


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _plain_png(data: bytes) -> np.ndarray | None:
    """The (H, W) uint8 values of an 8-bit palette or grey PNG, not interlaced, with every
    row unfiltered (as PIL writes class maps), read without PIL in a quarter of its time (the
    stages' checks read every mask: docs/method.md §9); None for any other PNG, which PIL
    reads. The deflate stream's own checksum catches a corrupt file."""
    if not data.startswith(_PNG_SIGNATURE):
        return None
    pos, size, idat = 8, None, []
    while pos + 8 <= len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        if kind == b"IHDR" and n >= 13:
            w, h, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, pos + 8)
            if depth != 8 or colour not in (0, 3) or interlace:
                return None
            size = (h, w)
        elif kind == b"IDAT":
            idat.append(data[pos + 8 : pos + 8 + n])
        elif kind == b"IEND":
            break
        pos += 12 + n
    if size is None or not idat:
        return None
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error:
        return None  # PIL names what is wrong
    h, w = size
    if len(raw) != h * (w + 1):
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(h, w + 1)
    if rows[:, 0].any():  # a filtered row
        return None
    return rows[:, 1:].copy()


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(W, H) of an image file, read from its header: a JPEG's frame header or a PNG's IHDR
    directly, anything else (or anything unexpected) through PIL; DatasetError naming the
    file when it cannot be read."""
    try:
        size = _header_size(path)
        if size is None:
            with Image.open(path) as im:
                size = im.size
    except (OSError, SyntaxError) as exc:
        raise DatasetError(f"cannot read image {str(path)!r}: {exc}") from exc
    return size


# JPEG start-of-frame markers (baseline, progressive, ...), which hold the height and width
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(W, H) from a JPEG's start-of-frame segment or a PNG's IHDR, reading only the
    segments before it (PIL's open costs several times more per file); None otherwise."""
    with open(path, "rb") as f:
        head = f.read(26)
        if head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if not head.startswith(b"\xff\xd8"):
            return None
        pos = 2
        for _ in range(64):  # APPn, DQT, DHT, ... segments before the frame
            f.seek(pos)
            marker = f.read(4)
            if len(marker) < 4 or marker[0] != 0xFF:
                return None
            if marker[1] in _SOF:
                frame = f.read(5)
                if len(frame) < 5:
                    return None
                h, w = struct.unpack(">HH", frame[1:5])
                return (w, h) if w and h else None
            pos += 2 + struct.unpack(">H", marker[2:4])[0]
    return None
