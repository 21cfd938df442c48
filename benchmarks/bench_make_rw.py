"""make-rw's device path per image: psa's against affext's, same device, same images, same
(random) weights; docs/performance.md's GPU target: affext >= 2x psa's on an H100 or H200 with
resnet38 on VOC-sized (500x375) images.

psa's path, one image at a time (docs/method.md §5): AffinityNet forward, affinities by
index_select of "from" and "to" features, the dense N x N matrix A, A^beta, column sums,
8 squarings, one (C, N) x (N, N) product, upsampling, argmax, label to the host
(affext.reference). affext's path is the stage's own (affext.stages.make_rw.walk_batch and
labels_to_host): batches of equal-size images, the sparse walk, labels copied asynchronously.
Neither includes image decoding, the dCRF or PNG writes (the stage runs those off the
device's thread). Prints a table and how often the two labels agree.

    python benchmarks/bench_make_rw.py                   # CUDA: resnet38, 500x375, batch 8
    python benchmarks/bench_make_rw.py --device cpu      # tiny backbone, 320x240, 4 images
    python benchmarks/bench_make_rw.py --json out.json   # also the numbers as JSON
    python benchmarks/bench_make_rw.py --batching VOC_ROOT LIST   # make-rw's batches of a list
    pytest benchmarks/bench_make_rw.py -s                # the same, per device, as a test
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from affext.bench import environment
from affext.models import AffinityNet, build_backbone
from affext.reference.affinity import psa_affinity
from affext.reference.random_walk import psa_dense_walk

# the module, which the package's make_rw function shadows
stage = importlib.import_module("affext.stages.make_rw")


@dataclass
class Setting:
    backbone: str
    width: int
    height: int
    images: int
    batch_size: int
    rounds: int
    live: int = 3  # CAM channels that are not zero: background + the image's classes (psa)


PRESETS = {
    "cuda": Setting("resnet38", 500, 375, images=32, batch_size=8, rounds=5),
    "cpu": Setting("tiny", 320, 240, images=4, batch_size=4, rounds=2),
}


def make_inputs(s: Setting, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, 3, Hp, Wp) zero-padded to a multiple of 8, and psa-shaped CAM vectors
    (n, 21, Hp/8, Wp/8): background and `live - 1` classes smooth and positive, the rest 0."""
    g = torch.Generator().manual_seed(seed)
    hp, wp = stage.padded(s.height), stage.padded(s.width)
    x = torch.zeros(s.images, 3, hp, wp)
    coarse = torch.randn(s.images, 3, s.height // 16, s.width // 16, generator=g)
    x[:, :, : s.height, : s.width] = F.interpolate(
        coarse, size=(s.height, s.width), mode="bilinear", align_corners=False
    )
    cams = torch.zeros(s.images, 21, hp // 8, wp // 8)
    for i in range(s.images):
        classes = [0] + (torch.randperm(20, generator=g)[: s.live - 1] + 1).tolist()
        blobs = torch.rand(len(classes), 1, 4, 5, generator=g)
        cams[i, classes] = F.interpolate(blobs, size=(hp // 8, wp // 8), mode="bilinear")[:, 0]
    return x, cams


def psa_path(model, x, cams, s: Setting, cfg) -> list[torch.Tensor]:
    """psa's per-image make-rw; (H, W) uint8 labels on the host."""
    out = []
    hp, wp = x.shape[-2:]
    logt = cfg.iterations.bit_length() - 1
    for i in range(x.shape[0]):
        feat = model(x[i : i + 1].to(model_device(model), non_blocking=True))
        aff = psa_affinity(feat, cfg.radius)[0]
        cam = cams[i].to(feat.device, non_blocking=True)
        walked = psa_dense_walk(cam, aff, hp // 8, wp // 8, cfg.beta, logt, cfg.radius)
        up = F.interpolate(walked[None], size=(hp, wp), mode="bilinear", align_corners=False)
        out.append(up[0, :, : s.height, : s.width].argmax(dim=0).to(torch.uint8).cpu())
    return out


def affext_path(model, x, cams, s: Setting, cfg) -> list[torch.Tensor]:
    """The stage's device work on batches of batch_size; (H, W) uint8 labels on the host."""
    device = model_device(model)
    out = []
    for start in range(0, x.shape[0], s.batch_size):
        xb = x[start : start + s.batch_size].to(device, non_blocking=True)
        cb = cams[start : start + s.batch_size].to(device, non_blocking=True)
        walked = stage.walk_batch(model, xb, cb, cfg)
        sizes = [(s.height, s.width)] * xb.shape[0]
        out += [label for label, _ in stage.labels_to_host(walked, sizes, sizes, None)]
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the labels are on the host from here
    return out


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def timed(fn, device: torch.device, rounds: int) -> tuple[float, list]:
    """Median seconds of `rounds` calls after one warm-up call, and the last call's result."""
    result = fn()
    times = []
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def run(device: str, setting: Setting | None = None) -> dict:
    dev = torch.device(device)
    s = setting or PRESETS[dev.type]
    cfg = stage.MakeRwConfig(backbone=s.backbone, device=device)
    torch.manual_seed(0)
    model = AffinityNet(build_backbone(s.backbone)).to(dev).eval()
    x, cams = make_inputs(s)
    if dev.type == "cuda":
        x, cams = x.pin_memory(), cams.pin_memory()
    results, labels = {}, {}
    with torch.inference_mode():
        for name, path in (("psa", psa_path), ("affext", affext_path)):
            seconds, labels[name] = timed(lambda p=path: p(model, x, cams, s, cfg), dev, s.rounds)
            results[name] = {"seconds": seconds, "images_per_s": s.images / seconds}
    pairs = zip(labels["psa"], labels["affext"])
    agree = statistics.mean((a == b).float().mean().item() for a, b in pairs)
    return {
        "setting": asdict(s),
        "walk": {"beta": cfg.beta, "iterations": cfg.iterations, "radius": cfg.radius},
        "map": [stage.padded(s.height) // 8, stage.padded(s.width) // 8],
        "psa": results["psa"],
        "affext": results["affext"],
        "speedup": results["psa"]["seconds"] / results["affext"]["seconds"],
        "labels_agree": agree,
        "environment": environment(device),
    }


def format_table(r: dict) -> str:
    s, env = r["setting"], r["environment"]
    where = env["gpu"] or f"{env['cpu']}, {env['threads']} threads"
    h, w = r["map"]
    lines = [
        f"make-rw device path on {where}; torch {env['torch']} (CUDA {env['cuda']}), fp32, "
        f"matmul precision {env['float32_matmul_precision']}",
        f"{s['backbone']} AffinityNet, random weights; {s['images']} images of "
        f"{s['width']}x{s['height']} (map {w}x{h}, N = {h * w}), C = 21 ({s['live']} live), "
        f"beta {r['walk']['beta']:g}, t = {r['walk']['iterations']}; median of {s['rounds']}",
        "",
        "| path | s per image | images/s | vs psa |",
        "| --- | --- | --- | --- |",
    ]
    for name, what in (
        ("psa", "psa: per image, dense N x N, 8 squarings"),
        ("affext", f"affext: make-rw's batches of {s['batch_size']}, sparse walk"),
    ):
        res = r[name]
        ratio = r["psa"]["seconds"] / res["seconds"]
        lines.append(
            f"| {what} | {res['seconds'] / s['images'] * 1e3:.1f} ms | "
            f"{res['images_per_s']:.1f} | {ratio:.2f}x |"
        )
    lines.append(f"\nlabels agree on {r['labels_agree'] * 100:.2f}% of pixels")
    return "\n".join(lines)


def batching(voc_root: str, list_file: str, batch_size: int, long_side: int | None) -> str:
    """How make-rw batches a list: sizes, batches, images per batch."""
    from affext.data import VOCDataset, read_id_list

    voc = VOCDataset(voc_root, label_source="xml")
    ids = read_id_list(list_file)
    batches = stage._size_batches(voc, ids, batch_size, long_side)
    fill = np.bincount([len(b) for b in batches], minlength=batch_size + 1)[1:]
    single = sum(1 for b in batches if len(b) == 1)
    return (
        f"{len(ids)} images in {len(batches)} batches of up to {batch_size} "
        f"({len(ids) / len(batches):.2f} images per batch; {single} images alone); "
        f"batches by size 1..{batch_size}: {fill.tolist()}"
    )


def test_make_rw_vs_psa_path(device):
    report = run(device)
    print("\n" + format_table(report))
    # the same walk: the labels differ only where float rounding flips a near tie
    assert report["labels_agree"] > 0.99


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backbone", help="default: resnet38 on CUDA, tiny on the CPU")
    p.add_argument("--size", help="WxH of the images, e.g. 500x375")
    p.add_argument("--images", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--json", help="write the report here")
    p.add_argument(
        "--batching",
        nargs=2,
        metavar=("VOC_ROOT", "LIST"),
        help="only print how "
        "make-rw batches the ids of LIST (the sizes come from the image headers)",
    )
    p.add_argument("--long-side", type=int, help="with --batching: make-rw's working size")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    s = Setting(**asdict(PRESETS[dev.type]))
    if args.batching:
        print(batching(*args.batching, args.batch_size or s.batch_size, args.long_side))
        return 0
    if args.backbone:
        s.backbone = args.backbone
    if args.size:
        s.width, s.height = (int(v) for v in args.size.lower().split("x"))
    for name in ("images", "batch_size", "rounds"):
        if getattr(args, name):
            setattr(s, name, getattr(args, name))
    report = run(args.device, s)
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
