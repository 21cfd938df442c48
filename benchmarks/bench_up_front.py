"""The checks the stages make before their first image, at COCO's scale: a list of N ids
(20,000 by default) of tiny images in the VOC layout, 80 classes, in a temporary folder.

Timed, each alone (seconds, the best of --rounds): reading the id list (read_id_list),
opening the dataset (VOCDataset, which reads cls_labels.npy), `affext run`'s up-front
check (every id's image and labels, every eval mask's classes: pipeline's _check_inputs,
with the list as both the training and the eval list), the per-stage file checks
(check_ids; missing_files, as pending and require_cams use it) and make-rw's size batches
(every image's header). Prints a table; --json writes the numbers.

    python benchmarks/bench_up_front.py                  # 20,000 images of 32x24
    python benchmarks/bench_up_front.py --images 82081   # COCO train2014's labelled count
    python benchmarks/bench_up_front.py --width 640 --height 480 --images 2000
    python benchmarks/bench_up_front.py --root /tmp/ds     # keep (and reuse) the dataset
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from affext.bench.machine import write_record
from affext.data.voc import VOCDataset, read_id_list, save_cls_labels, voc_palette
from affext.files import missing_files
from affext.stages import pipeline
from affext.stages.config import RunConfig
from affext.stages.make_rw import _size_batches

NUM_CLASSES = 80


def make_dataset(root: Path, n: int, width: int, height: int, seed: int = 0) -> list[str]:
    """N images (a few distinct JPEGs written again under each id), their masks (a few
    distinct palette PNGs, classes 1..80 and 255), cls_labels.npy, classes.txt and a list
    file; returns the ids."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(exist_ok=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"class {c}\n" for c in range(1, NUM_CLASSES + 1)))
    variants = []
    for _ in range(16):
        rgb = rng.integers(0, 255, (height, width, 3), np.uint8)
        mask = np.zeros((height, width), np.uint8)
        classes = rng.choice(NUM_CLASSES, 3, replace=False) + 1
        for k, c in enumerate(classes):
            mask[:, k * width // 4 : (k + 1) * width // 4] = c
        mask[: height // 8] = 255
        jpeg, png = io.BytesIO(), io.BytesIO()
        Image.fromarray(rgb).save(jpeg, format="JPEG", quality=90)
        pal = Image.fromarray(mask, mode="P")
        pal.putpalette(voc_palette())
        pal.save(png, format="PNG")
        vec = np.zeros(NUM_CLASSES, np.float32)
        vec[classes - 1] = 1
        variants.append((jpeg.getvalue(), png.getvalue(), vec))
    ids = [f"COCO_train2014_{i:012d}" for i in range(n)]
    table = {}
    for i, image_id in enumerate(ids):
        jpeg, png, vec = variants[i % len(variants)]
        (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpeg)
        (root / "SegmentationClass" / f"{image_id}.png").write_bytes(png)
        table[image_id] = vec
    save_cls_labels(root / "cls_labels.npy", table)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    return ids


def best_of(rounds: int, fn) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(root: Path, rounds: int) -> dict[str, float]:
    listed = root / "ImageSets" / "Segmentation" / "train.txt"
    ids = read_id_list(listed)
    voc = VOCDataset(root)
    cfg = RunConfig.for_backbone("tiny", device="cpu", num_workers=0)
    cams = root / "cam" / "{}.npy"
    return {
        "read_id_list": best_of(rounds, lambda: read_id_list(listed)),
        "VOCDataset": best_of(rounds, lambda: VOCDataset(root)),
        "run's up-front check": best_of(
            rounds, lambda: pipeline._check_inputs(root, cfg, ids, ids)
        ),
        "check_ids": best_of(rounds, lambda: voc.check_ids(ids)),
        "missing_files (pending)": best_of(rounds, lambda: missing_files(ids, [cams])),
        "make-rw size batches": best_of(rounds, lambda: _size_batches(voc, ids, 8, 320)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--height", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--root", help="make the dataset here and keep it (reused if there)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="affext-up-front-") as tmp:
        root = Path(args.root or tmp)
        start = time.perf_counter()
        if not (root / "cls_labels.npy").is_file():
            make_dataset(root, args.images, args.width, args.height)
        made = time.perf_counter() - start
        times = measure(root, args.rounds)
    print(
        f"{args.images} images of {args.width}x{args.height}, {NUM_CLASSES} classes "
        f"(written in {made:.1f} s); best of {args.rounds}"
    )
    for name, seconds in times.items():
        print(f"  {name:<26} {seconds:8.3f} s")
    if args.json:
        write_record(args.json, vars(args), seconds=times)
    return 0


if __name__ == "__main__":
    sys.exit(main())
