"""How far pydensecrf's permutohedral approximation (and affext.dense_crf, where built) lies
from the exact dense CRF (affext.reference.dense_crf), on small images: the sample photo,
synthesised textures and the embedded synthetic set, n = 2, 3 and 21 labels, psa's settings.

    python benchmarks/crf_accuracy.py [--json FILE] [--sizes 24x32,40x40] [--iterations 10]
    python benchmarks/crf_accuracy.py --self [--sizes 120x160,375x500]

Per case: mean |marginal difference|, its maximum, and the share of pixels whose argmax
agrees. These figures calibrate the tolerances of tests/test_dense_crf.py.
--self compares pydensecrf with itself on the image flipped left-right and transposed (the
results mapped back): the lattice is not invariant to either, so this is how far another
permutohedral lattice of the same accuracy, but not pydensecrf's own, may land from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import affext
from affext.bench.cases import crf_photo, crf_scores, crf_texture
from affext.reference.dense_crf import dense_crf_reference, pydensecrf_reference


def synth_images(count: int, size: tuple[int, int]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, ground truth) of the embedded synthetic set at small sizes."""
    from PIL import Image

    from affext.data import SynthConfig, make_synthetic_voc

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SynthConfig(num_train=count, num_val=0, min_size=size[0], max_size=size[1], seed=3)
        root = make_synthetic_voc(Path(tmp) / "voc", cfg, progress=False)
        ids = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
        for image_id in ids:
            image = np.asarray(Image.open(root / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
            gt = np.asarray(Image.open(root / "SegmentationClass" / f"{image_id}.png"))
            out.append((f"synth-{image_id}", image.copy(), gt.copy()))
    return out


def gt_scores(gt: np.ndarray, seed: int) -> np.ndarray:
    """psa-shaped la scores from a ground truth: [(1 - max CAM)^4; CAM of each class present],
    the CAMs the class masks blurred and noised."""
    from affext.bench.crf_inputs import _blur

    rng = np.random.default_rng(seed)
    classes = [c for c in np.unique(gt) if c not in (0, 255)]
    h, w = gt.shape
    masks = torch.from_numpy(np.stack([gt == c for c in classes]).astype(np.float64))
    cams = _blur(masks, max(1.0, min(h, w) / 10)) * 0.9
    cams = (cams + torch.from_numpy(rng.normal(0, 0.1, cams.shape))).clamp(0, 1)
    bg = (1 - cams.max(0).values) ** 4
    return torch.cat([bg[None], cams]).numpy().astype(np.float32)


def compare(q: np.ndarray, ref: np.ndarray) -> dict:
    diff = np.abs(q.astype(np.float64) - ref)
    return {
        "mean_abs": float(diff.mean()),
        "max_abs": float(diff.max()),
        "argmax_agree": float((q.argmax(0) == ref.argmax(0)).mean()),
    }


def self_consistency(sizes) -> list[dict]:
    """pydensecrf against itself on the image flipped left-right and transposed."""
    from affext.bench.cases import dense_crf_inputs

    rows = []
    for h, w in sizes:
        for n, kind in ((3, "cam"), (21, "probs")):
            for source, seed in (("photo", 0), ("texture", 1)):
                image, scores = dense_crf_inputs(h, w, n, seed, source, kind)
                base = pydensecrf_reference(image, scores)
                row = {"image": f"{source}-{h}x{w}", "n": n, "scores": kind}
                flip = pydensecrf_reference(
                    np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(scores[..., ::-1])
                )[..., ::-1]
                row["hflip"] = compare(flip, base)
                turn = pydensecrf_reference(
                    np.ascontiguousarray(image.transpose(1, 0, 2)),
                    np.ascontiguousarray(scores.transpose(0, 2, 1)),
                ).transpose(0, 2, 1)
                row["transpose"] = compare(turn, base)
                rows.append(row)
                print(
                    f"{row['image']:18s} n={n:2d} {kind:6s} pydensecrf vs itself: "
                    + " | ".join(
                        f"{k} mean {row[k]['mean_abs']:.2e} argmax "
                        f"{100 * row[k]['argmax_agree']:.2f}%"
                        for k in ("hflip", "transpose")
                    ),
                    flush=True,
                )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--sizes", default="24x32,40x40,33x37")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--self", action="store_true", help="pydensecrf against itself")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    if args.self:
        rows = self_consistency(sizes)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
        return 0
    cases = []
    for h, w in sizes:
        photo = crf_photo(h, w)
        for n in (2, 3, 21):
            for kind in ("cam", "probs"):
                if photo is not None:
                    cases.append((f"photo-{h}x{w}", photo, crf_scores(photo, n, n, kind), kind))
                for seed in (1, 2):
                    tex = crf_texture(h, w, seed)
                    cases.append(
                        (f"texture{seed}-{h}x{w}", tex, crf_scores(tex, n, seed, kind), kind)
                    )
    for name, image, gt in synth_images(4, (32, 44)):
        cases.append((name, image, gt_scores(gt, 0), "gt-cam"))
    ours = getattr(affext, "dense_crf", None)
    rows = []
    for name, image, scores, kind in cases:
        ref = dense_crf_reference(image, scores, args.iterations).numpy()
        row = {"image": name, "n": scores.shape[0], "scores": kind, "iterations": args.iterations}
        row["pydensecrf"] = compare(pydensecrf_reference(image, scores, args.iterations), ref)
        if ours is not None:
            q = ours(torch.from_numpy(image), torch.from_numpy(scores), args.iterations).numpy()
            row["affext"] = compare(q, ref)
        rows.append(row)
        p = row["pydensecrf"]
        print(
            f"{name:18s} n={row['n']:2d} {kind:6s} pydensecrf vs exact: mean "
            f"{p['mean_abs']:.2e} max {p['max_abs']:.2e} argmax {100 * p['argmax_agree']:.2f}%"
            + (
                f" | affext: mean {row['affext']['mean_abs']:.2e} max "
                f"{row['affext']['max_abs']:.2e} argmax {100 * row['affext']['argmax_agree']:.2f}%"
                if "affext" in row
                else ""
            ),
            flush=True,
        )
    for impl in ("pydensecrf", "affext"):
        got = [r[impl] for r in rows if impl in r]
        if got:
            print(
                f"{impl} vs exact over {len(got)} cases: mean |diff| worst "
                f"{max(g['mean_abs'] for g in got):.2e} (median "
                f"{np.median([g['mean_abs'] for g in got]):.2e}), max |diff| worst "
                f"{max(g['max_abs'] for g in got):.2e}, argmax agreement worst "
                f"{100 * min(g['argmax_agree'] for g in got):.2f}%"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
