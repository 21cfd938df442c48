"""What a benchmark run measures: its entries (an op at a shape, run by affext and its
references) at the shapes of a real run, or the smaller ones of --quick."""

from __future__ import annotations

from dataclasses import dataclass

import torch

AFFEXT = "affext"


@dataclass(frozen=True)
class Point:
    """One benchmark entry: an op at one shape, run by affext and its references."""

    id: str
    op: str
    group: str
    title: str
    params: dict
    impls: dict  # implementation -> case name, affext first

    @property
    def n(self) -> int:
        """The map's area H * W (the dCRF's points give height and width, the others size)."""
        if "height" in self.params:
            return int(self.params["height"]) * int(self.params["width"])
        return int(self.params["size"]) ** 2


# Shapes of a real run: a 448 crop is a 56x56 map at stride 8 (docs/method.md §3-5).
TRAIN = dict(batch=8, size=56, radius=5)
WALK = dict(channels=21, beta=8, iterations=256, radius=5)
SCALING_SIZES = (28, 56, 84, 112, 160, 224, 320, 448, 512)
# --quick: small enough for the test suite; the same code paths.
QUICK_TRAIN = dict(batch=1, size=28, radius=5)
QUICK_WALK = dict(channels=21, beta=8, iterations=32, radius=5)
QUICK_SCALING_SIZES = (12, 16, 24)
# The dense CRF of a VOC image (psa's la/ha: 3 labels; rw_crf / seg_crf: up to 21), 10
# iterations, psa's settings; on CUDA also a batch of 8 images in one call.
CRF = dict(height=375, width=500, iterations=10)
CRF_BATCH = 8
QUICK_CRF = dict(height=48, width=64, iterations=5)
# PAR at ToCo's training shape at half resolution (docs/performance.md).
PAR_SHAPE = dict(batch=2, channels=4, size=224, iterations=10)
QUICK_PAR = dict(batch=1, channels=2, size=32, iterations=2)
QUICK_NOTE = (
    "quick: smaller shapes (batch 1, 28x28 maps, C=64 features; walks of t=32 on "
    "maps up to 24x24; dCRF of 48x64 images, 5 iterations; PAR on 32x32), 3 repeats, 1 s "
    "budget; checks the harness, not affext's speed"
)
FULL_NOTE = (
    "full: the shapes of a real run (448 crop, batch 8), the walk up to 512x512, the "
    "dCRF of a 375x500 image, PAR at 224x224"
)


def plan(quick: bool = False, device: str = "cpu") -> list[Point]:
    """The benchmark entries of a run, in order. On a GPU the affinity also runs in bfloat16
    ("affext-bf16"; the CPU kernels take float32 and float64 only)."""
    train = QUICK_TRAIN if quick else TRAIN
    walk = QUICK_WALK if quick else WALK
    sizes = QUICK_SCALING_SIZES if quick else SCALING_SIZES
    channels = 64 if quick else 448
    walk_size = 16 if quick else 56
    aff = {AFFEXT: "affinity/affext", "psa-dense": "affinity/psa-dense"}
    if torch.device(device).type == "cuda":
        aff["affext-bf16"] = "affinity/affext-bf16"
    loss = {AFFEXT: "pair_loss/affext", "psa-dense": "pair_loss/psa"}
    rw = {
        AFFEXT: "random_walk/affext",
        "psa-dense": "random_walk/psa-dense",
        "torch-sparse": "random_walk/torch-sparse",
    }
    b, s, r = train["batch"], train["size"], train["radius"]
    points = [
        Point(
            "affinity/train",
            "affinity",
            "shapes",
            f"affinity fwd+bwd, B={b}, C={channels}, {s}x{s}, r={r}",
            dict(train, channels=channels),
            aff,
        ),
        Point(
            "pair_loss/train",
            "pair_loss",
            "shapes",
            f"pair loss fwd+bwd from labels, B={b}, {s}x{s}, r={r}",
            dict(train),
            loss,
        ),
    ]
    par = QUICK_PAR if quick else PAR_SHAPE
    points.append(
        Point(
            "par/toco",
            "par",
            "shapes",
            f"PAR (AFA / ToCo), B={par['batch']}, C={par['channels']}, "
            f"{par['size']}x{par['size']}, {par['iterations']} steps, "
            "dilations (1, 2, 4, 8, 12, 24)",
            dict(par),
            {AFFEXT: "par/affext", "afa-toco": "par/afa-toco"},
        )
    )
    t, c = walk["iterations"], walk["channels"]
    for live, words in (
        ("psa", "psa-shaped CAMs (bg + 2 classes live)"),
        ("all", f"all {c} channels live"),
    ):
        points.append(
            Point(
                f"random_walk/{walk_size}-{live}",
                "random_walk",
                "shapes",
                f"random walk, {walk_size}x{walk_size}, C={c}, t={t}, beta={walk['beta']}, {words}",
                dict(walk, size=walk_size, live=live),
                rw,
            )
        )
    points += crf_points(quick, device)
    for size in sizes:
        points.append(
            Point(
                f"random_walk/scaling-{size}",
                "random_walk",
                "scaling",
                f"random walk, {size}x{size} (N={size * size}), C={c}, t={t}, psa-shaped CAMs",
                dict(walk, size=size, live="psa"),
                rw,
            )
        )
    return points


def crf_points(quick: bool = False, device: str = "cpu") -> list[Point]:
    """The dense CRF's entries: one image with 3 labels (make-aff-labels' la or ha) and with
    21 (seg_crf), psa's la + ha pair of one image as one affext call against two pydensecrf
    calls, and on CUDA a batch of images in one call (pydensecrf: one call each)."""
    crf = QUICK_CRF if quick else CRF
    impls = {AFFEXT: "dense_crf/affext", "pydensecrf": "dense_crf/pydensecrf"}
    h, w, t = crf["height"], crf["width"], crf["iterations"]
    shapes = [
        ("3", dict(labels=3, kind="cam"), "3 labels (la or ha)"),
        ("21", dict(labels=21, kind="probs"), "21 labels"),
        ("la-ha", dict(labels=3, kind="cam", pair=True), "la + ha of one image, 3 labels"),
    ]
    if torch.device(device).type == "cuda":
        b = 2 if quick else CRF_BATCH
        shapes.append((f"batch{b}-21", dict(labels=21, kind="probs", batch=b), f"{b} images"))
    return [
        Point(
            f"dense_crf/{h}x{w}-{key}",
            "dense_crf",
            "shapes",
            f"dense CRF, {h}x{w}, {words}, {t} iterations, psa's settings",
            dict(crf, **params),
            impls,
        )
        for key, params, words in shapes
    ]
