"""`affext data coco`'s speed on a synthetic COCO-like split: N images of 640x480 (COCO's
most common size), about 7 instances each (COCO 2014's mean is 7.3): polygons of 8-24
points, one image in ten with a crowd region as an uncompressed RLE and one instance in ten
as a compressed RLE, over the 80 categories with COCO's id gaps; one image in a hundred
without annotations. Converted into a temporary folder; prints images/s (the JSON read and
planned, the images linked, the masks decoded and written), for each --workers value.

    python benchmarks/bench_coco.py                        # 400 images, workers 0 and all cores
    python benchmarks/bench_coco.py --images 2000 --workers 4
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from affext.bench.machine import write_record
from affext.data.coco import convert_coco
from affext.workers import default_processes

GAPS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
CATEGORIES = [i for i in range(1, 91) if i not in GAPS]
W, H = 640, 480


def _rle(mask: np.ndarray) -> list[int]:
    flat = mask.T.reshape(-1).astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def make_split(folder: Path, n: int, seed: int = 0) -> Path:
    """FOLDER/images/*.jpg and FOLDER/instances.json; returns the JSON's path."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    jpegs = []
    for _ in range(8):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (H, W, 3), np.uint8)).save(buf, format="JPEG")
        jpegs.append(buf.getvalue())
    images, annotations = [], []
    yy, xx = np.mgrid[0:H, 0:W]
    for i in range(n):
        name = f"COCO_bench2014_{i:012d}.jpg"
        (folder / "images" / name).write_bytes(jpegs[i % len(jpegs)])
        images.append({"id": i, "file_name": name, "height": H, "width": W})
        if i % 100 == 99:
            continue
        for k in range(int(rng.integers(3, 12))):
            cy, cx = rng.uniform(40, H - 40), rng.uniform(40, W - 40)
            r = rng.uniform(15, 120)
            points = int(rng.integers(8, 25))
            angles = np.sort(rng.uniform(0, 2 * np.pi, points))
            radii = r * rng.uniform(0.5, 1.0, points)
            poly = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
            segmentation: object = [np.clip(poly, 0, [W - 1, H - 1]).ravel().round(2).tolist()]
            crowd = int(k == 0 and i % 10 == 0)
            if crowd or k % 10 == 9:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                if crowd:
                    segmentation = {"size": [H, W], "counts": _rle(mask)}
                else:
                    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                    segmentation = {"size": [H, W], "counts": rle["counts"].decode()}
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": int(rng.choice(CATEGORIES)),
                    "iscrowd": crowd,
                    "segmentation": segmentation,
                }
            )
    categories = [{"id": c, "name": f"category {c}"} for c in CATEGORIES]
    path = folder / "instances.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, default_processes()])
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="affext-bench-coco-") as tmp:
        path = make_split(Path(tmp) / "src", args.images)
        for workers in args.workers:
            out = Path(tmp) / f"out{workers}"
            start = time.perf_counter()
            done = convert_coco(
                path, path.parent / "images", out, "train", workers=workers, progress=False
            )
            seconds = time.perf_counter() - start
            results[workers] = {
                "seconds": round(seconds, 2),
                "images_per_s": done["images"] / seconds,
            }
            print(
                f"{done['images']} images of {W}x{H}, workers {workers}: {seconds:.1f} s, "
                f"{done['images'] / seconds:.1f} images/s",
                flush=True,
            )
    if args.json:
        write_record(args.json, vars(args), results=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
