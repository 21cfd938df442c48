"""psa's infer_aff path against affext's, per image, at a VOC-sized map.

    python benchmarks/bench_psa.py [--height 376 --width 504] [--threads 2] [--device cpu]
    pytest benchmarks/bench_psa.py -s

Per image, from the padded image (1, 3, H, W) and the pooled CAMs (21, H/8, W/8) with
background and two classes live (psa's CAMs), as psa's infer_aff.py runs it:
  psa:    AffinityNet forward (ResNet-38, random weights) -> psa's (1, 34, n_from) affinity by
          index_select and an explicit difference tensor -> dense N x N matrix -> ** beta,
          column sums -> 8 squarings -> one product -> upsample -> argmax
          (affext.reference's psa formulations);
  affext: the same forward -> affext.psa.affinity (fused kernel) -> affext.psa.random_walk
          (stencil, t = 256) -> upsample -> argmax.
Each implementation runs in a fresh process: one warm-up call, then one measured call; peak
memory is the growth of the process's peak RSS over the measured call (CPU), or of
torch.cuda.max_memory_allocated (CUDA), for the whole image and for the part after the
forward (affinity + walk), which is where the two differ.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

IMPLS = ("psa", "affext")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Peak:
    """Peak extra memory since `reset()`: peak RSS on the CPU, the allocator's on CUDA."""

    def __init__(self, device: torch.device) -> None:
        from affext import measure

        self.device, self.measure = device, measure

    def reset(self) -> None:
        _sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            gc.collect()
            self.measure._release_freed_memory(self.device)
            self.measure._reset_peak_rss()
            self.base = self.measure._peak_rss_bytes()

    def extra(self) -> int:
        _sync(self.device)
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self.base
        return self.measure._peak_rss_bytes() - self.base


def _child(impl: str, height: int, width: int, device: str, threads: int) -> dict:
    import affext.psa as psa
    from affext.models import AffinityNet, build_backbone
    from affext.reference.affinity import psa_affinity
    from affext.reference.random_walk import psa_dense_walk

    torch.set_num_threads(threads)
    dev = torch.device(device)
    torch.manual_seed(0)
    net = AffinityNet(build_backbone("resnet38")).eval().to(dev)
    x = torch.randn(1, 3, height, width, device=dev)
    h, w = -(-height // 8), -(-width // 8)
    cam = torch.zeros(21, h, w, device=dev)
    cam[[0, 3, 12]] = torch.rand(3, h, w, device=dev)  # background and two classes live
    peak = _Peak(dev)

    def walk(feat):
        if impl == "psa":
            aff = psa_affinity(feat)
            return psa_dense_walk(cam, aff[0], h, w, beta=8, logt=8)
        return psa.random_walk(cam, psa.affinity(feat), beta=8, logt=8)

    def image() -> dict:
        times = {}
        start = time.perf_counter()
        feat = net(x)
        _sync(dev)
        times["forward_s"] = time.perf_counter() - start
        mid = time.perf_counter()
        peak_forward = peak.extra()
        peak.reset()
        rw = walk(feat)
        up = F.interpolate(rw[None], size=(height, width), mode="bilinear", align_corners=False)
        up[0].argmax(dim=0).to(torch.uint8).cpu()
        _sync(dev)
        times["walk_s"] = time.perf_counter() - mid
        times["walk_peak_extra_bytes"] = peak.extra()
        times["forward_peak_extra_bytes"] = peak_forward
        return times

    with torch.no_grad():
        peak.reset()
        image()  # warm-up
        peak.reset()
        result = image()
    result["image_s"] = result["forward_s"] + result["walk_s"]
    # the whole image's peak: the larger of the two phases (the walk's is measured above what
    # the forward left: its output feature)
    result["image_peak_extra_bytes"] = max(
        result["forward_peak_extra_bytes"], result["walk_peak_extra_bytes"]
    )
    result.update(impl=impl, height=height, width=width, map=[h, w], device=device)
    result["threads"] = threads
    return result


def run(height: int = 376, width: int = 504, device: str = "cpu", threads: int = 2) -> list:
    """Both implementations, each in a fresh process; returns their result dicts."""
    root = str(Path(__file__).resolve().parents[1])  # this checkout's affext, not another
    paths = [root, os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    results = []
    for impl in IMPLS:
        argv = [sys.executable, __file__, "--child", impl, "--height", str(height)]
        argv += ["--width", str(width), "--device", device, "--threads", str(threads)]
        out = subprocess.run(argv, check=True, capture_output=True, text=True, env=env)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def report(results: list) -> str:
    mb = 1 / 2**20
    lines = [
        "| path | per image | forward | affinity + walk | peak extra memory (image / "
        "affinity + walk) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['impl']} | {r['image_s']:.2f} s | {r['forward_s']:.2f} s | "
            f"{r['walk_s'] * 1e3:.0f} ms | {r['image_peak_extra_bytes'] * mb:.0f} MiB / "
            f"{r['walk_peak_extra_bytes'] * mb:.1f} MiB |"
        )
    psa_r, ours = results
    lines.append(
        f"\naffinity + walk: {psa_r['walk_s'] / ours['walk_s']:.0f}x faster, "
        f"{psa_r['walk_peak_extra_bytes'] / max(ours['walk_peak_extra_bytes'], 4096):.0f}x less "
        f"memory; whole image: {psa_r['image_s'] / ours['image_s']:.2f}x"
    )
    return "\n".join(lines)


def test_infer_aff_psa_vs_affext():
    results = run()
    print("\n" + report(results))
    for r in results:
        assert r["map"] == [47, 63]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--height", type=int, default=376)
    p.add_argument("--width", type=int, default=504)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.height, args.width, args.device, args.threads)))
        return
    results = run(args.height, args.width, args.device, args.threads)
    print(report(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
