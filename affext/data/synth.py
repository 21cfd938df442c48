"""The embedded default dataset: small synthetic scenes in the VOC 2012 layout.

Each image holds 1-3 objects on a textured background. An object is a shape of one uniform,
muted colour carrying a saturated "mark" whose hue and pattern say its class. The body's hue
is drawn independently of the class (by default) and flat blobs of every muted hue lie around
as background clutter, so the body is no evidence and the mark is the discriminative part: a
classifier's CAMs are strong on the mark and weak over the rest of the object (docs/method.md
§1's premise). The rest of the object is one flat colour bounded by a clear edge, which
is what an affinity can learn and a random walk can spread over.

The dataset declares its own six classes (ROOT/classes.txt, indices 1..6; the names are VOC
names, so the XML reads the same either way), so that the pipeline runs on a class count
other than VOC's; `SynthConfig(voc_indices=True)` writes VOC's indices and no classes file.

Everything is generated from a seed, deterministically; nothing is downloaded or shipped.
"""

from __future__ import annotations

import colorsys
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..files import atomic_save
from ..records import record_config
from .voc import ANNOTATION_DIR, CLASSES_FILE, IMAGE_DIR, VOC_CLASSES, save_label_png

# The classes the scenes use (indices 1..6, or VOC's), and their marks: hue and pattern.
SYNTH_CLASSES: tuple[str, ...] = ("aeroplane", "bird", "car", "cat", "dog", "person")
_PATTERNS = ("solid", "stripes", "checker")


@dataclass
class SynthConfig:
    """How the synthetic dataset is generated (all sizes in pixels)."""

    num_train: int = 300
    num_val: int = 100
    seed: int = 0
    min_size: int = 96  # image height and width are drawn from [min_size, max_size]
    max_size: int = 128
    max_objects: int = 3
    max_clutter: int = 2  # flat blobs without a mark (background)
    mark_fraction: float = 0.4  # mark diameter / object's smaller extent
    body_hue_spread: float = 0.5  # body hue = class hue +- this (turns; 0.5: any hue)
    void_width: int = 2  # VOC-like 255 band around object boundaries
    jpeg_quality: int = 92
    voc_indices: bool = False  # VOC's class indices and no classes.txt (a VOC stand-in)


def synth_class_names(cfg: SynthConfig) -> tuple[str, ...]:
    """The dataset's foreground classes, index 1..C: its own six, or VOC's 20."""
    return VOC_CLASSES if cfg.voc_indices else SYNTH_CLASSES


def _class_marks(names: tuple[str, ...]) -> dict[int, tuple[float, tuple[int, int, int], str]]:
    """Class index (1..C of `names`) -> (hue, mark RGB, pattern); hues evenly spaced, patterns
    cycling."""
    marks = {}
    n = len(SYNTH_CLASSES)
    for i, name in enumerate(SYNTH_CLASSES):
        r, g, b = colorsys.hsv_to_rgb(i / n, 1.0, 1.0)
        marks[names.index(name) + 1] = (
            i / n,
            (int(r * 255), int(g * 255), int(b * 255)),
            _PATTERNS[i % len(_PATTERNS)],
        )
    return marks


def _muted_colour(
    rng: np.random.Generator,
    hue: float | None = None,
    saturation: tuple[float, float] = (0.25, 0.5),
) -> tuple[int, int, int]:
    """A flat, muted colour (objects' bodies and clutter); random hue unless given."""
    h = rng.random() if hue is None else hue % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(*saturation), rng.uniform(0.45, 0.85))
    return int(r * 255), int(g * 255), int(b * 255)


def _shape_mask(
    rng: np.random.Generator, h: int, w: int, cy: float, cx: float, ry: float, rx: float
) -> np.ndarray:
    """Boolean (h, w) mask of an ellipse, rotated rectangle or random polygon."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    kind = rng.integers(3)
    if kind == 0:
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
    else:
        if kind == 1:
            corners = [(-rx, -ry), (rx, -ry), (rx, ry), (-rx, ry)]
        else:
            n = int(rng.integers(5, 9))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = rng.uniform(0.6, 1.0, n)
            corners = [(rx * r * np.cos(a), ry * r * np.sin(a)) for a, r in zip(angles, radii)]
        theta = rng.uniform(0, np.pi)
        c, s = np.cos(theta), np.sin(theta)
        draw.polygon([(cx + c * x - s * y, cy + s * x + c * y) for x, y in corners], fill=1)
    return np.asarray(canvas, bool)


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Square erosion by r pixels (pixels outside the image count as outside the mask)."""
    out = mask.copy()
    padded = np.pad(mask, r, constant_values=False)
    h, w = mask.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out &= padded[r + dy : r + dy + h, r + dx : r + dx + w]
    return out


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    return ~_erode(~mask, r)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth muted colour field plus fine grain: texture, no flat regions."""
    cells = rng.integers(3, 7)
    coarse = np.stack(
        [
            np.array(_muted_colour(rng, saturation=(0.05, 0.3)), np.uint8)
            for _ in range(cells * cells)
        ]
    )
    small = Image.fromarray(coarse.reshape(cells, cells, 3))
    field = np.asarray(small.resize((w, h), Image.BICUBIC), np.float32)
    grain = Image.fromarray(rng.integers(0, 255, (h // 4 + 1, w // 4 + 1), np.uint8))
    grain = np.asarray(grain.resize((w, h), Image.BILINEAR), np.float32)
    return field + (grain[..., None] - 128.0) * 0.25


def _draw_mark(
    rng: np.random.Generator,
    image: np.ndarray,
    body: np.ndarray,
    rgb: tuple[int, int, int],
    pattern: str,
    diameter: int,
) -> np.ndarray | None:
    """Paint a class mark inside `body`; returns its mask, or None if it does not fit."""
    inner = _erode(body, diameter // 2 + 1)
    ys, xs = np.nonzero(inner)
    if len(ys) == 0:
        return None
    k = rng.integers(len(ys))
    cy, cx = ys[k], xs[k]
    h, w = body.shape
    yy, xx = np.mgrid[0:h, 0:w]
    rad = diameter / 2
    mark = ((yy - cy) ** 2 + (xx - cx) ** 2 <= rad * rad) & body
    colour = np.array(rgb, np.float32)
    dark = colour * 0.25
    if pattern == "stripes":
        second = ((yy - cy + 100) // 3) % 2 == 1
    elif pattern == "checker":
        second = (((yy - cy + 100) // 3) + ((xx - cx + 100) // 3)) % 2 == 1
    else:
        second = np.zeros_like(mark)
    image[mark] = colour
    image[mark & second] = dark
    return mark


def _scene(rng: np.random.Generator, cfg: SynthConfig, marks: dict):
    """One image: (H, W, 3) uint8, (H, W) uint8 ground truth, objects [(class, bbox)]."""
    h = int(rng.integers(cfg.min_size, cfg.max_size + 1))
    w = int(rng.integers(cfg.min_size, cfg.max_size + 1))
    image = _background(rng, h, w)
    gt = np.zeros((h, w), np.uint8)
    short = min(h, w)
    # clutter first: flat blobs under the objects
    for _ in range(int(rng.integers(0, cfg.max_clutter + 1))):
        ry, rx = rng.uniform(0.08, 0.2, 2) * short
        blob = _shape_mask(rng, h, w, rng.uniform(0, h), rng.uniform(0, w), ry, rx)
        image[blob] = _muted_colour(rng)
    classes = sorted(marks)
    n_obj = int(
        rng.choice(np.arange(1, cfg.max_objects + 1), p=_object_count_probs(cfg.max_objects))
    )
    objects = []
    owner = np.zeros((h, w), np.int16)  # which object paints each pixel (0: none)
    mark_masks: list[np.ndarray] = []
    for _ in range(40):
        if len(objects) == n_obj:
            break
        ry, rx = rng.uniform(0.2, 0.34, 2) * short
        cy, cx = rng.uniform(ry * 0.7, h - ry * 0.7), rng.uniform(rx * 0.7, w - rx * 0.7)
        body = _shape_mask(rng, h, w, cy, cx, ry, rx)
        if body.sum() < 200:
            continue
        # keep earlier objects mostly visible and their marks intact
        if any((m & body).any() for m in mark_masks):
            continue
        if any(
            ((owner == i + 1) & body).sum() > 0.4 * (owner == i + 1).sum()
            for i in range(len(objects))
        ):
            continue
        cls = classes[int(rng.integers(len(classes)))]
        hue, rgb, pattern = marks[cls]
        spread = cfg.body_hue_spread
        body_colour = np.array(_muted_colour(rng, hue + rng.uniform(-spread, spread)), np.float32)
        trial = image.copy()
        trial[body] = body_colour
        ys, xs = np.nonzero(body)
        extent = min(ys.max() - ys.min(), xs.max() - xs.min()) + 1
        diameter = max(6, int(round(cfg.mark_fraction * extent)))
        mark = _draw_mark(rng, trial, body, rgb, pattern, diameter)
        if mark is None:
            continue
        image = trial
        owner[body] = len(objects) + 1
        gt[body] = cls
        mark_masks.append(mark)
        objects.append(cls)
    image = image + rng.normal(0.0, 3.0, image.shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    # void band on every object boundary, as VOC draws it
    if cfg.void_width > 0:
        band = np.zeros((h, w), bool)
        for i in range(len(objects)):
            region = owner == i + 1
            band |= _dilate(region, cfg.void_width // 2 + cfg.void_width % 2) & ~_erode(
                region, cfg.void_width // 2
            )
        gt[band] = 255
    boxes = []
    for i, cls in enumerate(objects):
        ys, xs = np.nonzero(owner == i + 1)
        boxes.append(
            (cls, (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1))
        )
    return image, gt, boxes


def _object_count_probs(n: int) -> np.ndarray:
    p = np.array([0.5, 0.35, 0.15][:n] + [0.1] * max(0, n - 3), np.float64)
    return p / p.sum()


def _annotation_xml(image_id: str, width: int, height: int, boxes, names) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "affext synthetic"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for cls, (x0, y0, x1, y1) in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = names[cls - 1]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for tag, value in (("xmin", x0), ("ymin", y0), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8") + b"\n"


def make_synthetic_voc(
    out: str | os.PathLike, config: SynthConfig | None = None, progress: bool = True
) -> Path:
    """Write the synthetic dataset to OUT in the VOC 2012 layout; returns OUT.

    OUT/JPEGImages/*.jpg, SegmentationClass/*.png (VOC palette, 255 void bands),
    Annotations/*.xml, ImageSets/Segmentation/{train,val,trainval}.txt, classes.txt (unless
    voc_indices). Image i depends only on (seed, i), so the files are the same on every run;
    existing complete files are kept.
    """
    cfg = config or SynthConfig()
    out = Path(out)
    for sub in (IMAGE_DIR, "SegmentationClass", ANNOTATION_DIR, "ImageSets/Segmentation"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    names = synth_class_names(cfg)
    classes_file = out / CLASSES_FILE
    if classes_file.is_file() == cfg.voc_indices and any((out / "SegmentationClass").iterdir()):
        # the kept files would mix the two class layouts
        held = "its own classes" if cfg.voc_indices else "VOC's class indices (an earlier affext)"
        raise ValueError(
            f"{str(out)!r} holds a synthetic set written with {held}; write this one to a "
            "new folder"
        )
    if cfg.voc_indices:
        classes_file.unlink(missing_ok=True)
    else:
        text = "".join(f"{n}\n" for n in names).encode()
        atomic_save(classes_file, lambda f: f.write(text))
    marks = _class_marks(names)
    total = cfg.num_train + cfg.num_val
    ids = [f"synth_{i:05d}" for i in range(total)]
    for i, image_id in enumerate(tqdm(ids, desc="data synth", disable=not progress)):
        paths = (
            out / IMAGE_DIR / f"{image_id}.jpg",
            out / "SegmentationClass" / f"{image_id}.png",
            out / ANNOTATION_DIR / f"{image_id}.xml",
        )
        if all(p.is_file() for p in paths):
            continue
        rng = np.random.default_rng([cfg.seed, i])
        image, gt, boxes = _scene(rng, cfg, marks)
        pil = Image.fromarray(image)
        atomic_save(
            paths[0], lambda f, pil=pil: pil.save(f, format="JPEG", quality=cfg.jpeg_quality)
        )
        save_label_png(paths[1], gt)
        xml = _annotation_xml(image_id, image.shape[1], image.shape[0], boxes, names)
        atomic_save(paths[2], lambda f, xml=xml: f.write(xml))
    lists = {"train": ids[: cfg.num_train], "val": ids[cfg.num_train :], "trainval": ids}
    for name, members in lists.items():
        text = "".join(f"{m}\n" for m in members).encode()
        atomic_save(
            out / "ImageSets" / "Segmentation" / f"{name}.txt", lambda f, text=text: f.write(text)
        )
    record_config(out, "synth", cfg, {"classes": list(SYNTH_CLASSES)})
    return out


__all__ = ["SYNTH_CLASSES", "SynthConfig", "make_synthetic_voc", "synth_class_names"]
