"""IRN's random walk: its dense formulation vs affext.irn.propagate_to_edge, per VOC-sized map.

IRN's walk (indexing.propagate_to_edge, written here in its formulation): the boundary map
padded with 1.0, the pairs of the padded grid put into a dense matrix through a sparse COO
tensor, cropped to the map (N x N), raised to beta, column-normalised, squared exp_times
times, then one (C, N) x (N, N) product. affext: path affinities (K, H, W) and the O(N) walk.
Both on the same inputs: a stride-4 map of a VOC image (94x125 for 375x500; 47x63 for a
half-size image), C = 2 classes, beta 10, exp_times 8 (256 steps).

    pytest benchmarks/bench_irn.py -s        # the cases one by one, each in a fresh process
    python -m benchmarks.bench_irn           # the README table (markdown), ~5 min on 2 cores

Time and peak extra memory (growth of peak RSS over the call, in a process of its own) come
from affext.measure. The dense walk at 94x125 costs 8 squarings of 2 N^3 = 3.2e12 FLOP each:
it is measured with exp_times 0 and 1, and the full walk extrapolated as t0 + 8 (t1 - t0)
(the peak is that of the run with one squaring: the same matrices are alive in every one).
That extrapolation is a lower bound: on the CPU the later squarings are much slower than the
first, their products being full of subnormal floats (measured at 47x63, 2 threads: 1.1,
1.4, 5.4, 44, 76, 44, 33, 26 s for the eight; 98 s in all instead of 234 s with
torch.set_flush_denormal(True)). affext's walk took the same time either way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from affext.irn import path_affinity, propagate_to_edge
from affext.measure import case, measure_warm_call, time_work
from affext.neighborhood import neighborhood_offsets

THREADS = 2
ROOT = str(Path(__file__).resolve().parent.parent)  # the checkout whose affext is measured
SIZES = {"94x125": (94, 125), "47x63": (47, 63)}
CHANNELS = 2


# --- inputs and IRN's formulation -----------------------------------------------------------
def irn_inputs(height: int, width: int, channels: int = CHANNELS):
    """(x (C, H, W) CAMs in [0, 1], edge (H, W) in [0, 1]): smooth blobs, and a boundary map
    with a few closed outlines of high values over low noise, as IRN's edge branch gives."""
    gen = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, channels, max(2, height // 12), max(2, width // 12), generator=gen)
    x = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
    x = x / x.amax(dim=(1, 2), keepdim=True)
    ys = torch.arange(height).view(-1, 1).float()
    xs = torch.arange(width).view(1, -1).float()
    edge = 0.05 * torch.rand(height, width, generator=gen)
    for cy, cx, r in ((0.4, 0.3, 0.25), (0.6, 0.7, 0.3)):
        ring = ((ys / height - cy) ** 2 + (xs / width - cx) ** 2).sqrt() - r
        edge = torch.maximum(edge, torch.exp(-((ring * height / 1.5) ** 2)))
    return x, edge.clamp(0, 1)


def irn_dense_propagate(x, edge, radius=5, beta=10, exp_times=8):
    """IRN's propagate_to_edge: dense N x N transition matrix, squared exp_times times."""
    height, width = x.shape[-2:]
    hp, wp = height + radius, width + 2 * radius
    padded = F.pad(edge, (radius, radius, 0, radius), value=1.0)
    aff = path_affinity(padded[None], radius)[0]  # (K, hp, wp), 0 where the partner is off
    index = torch.arange(hp * wp).view(hp, wp)
    rows, cols, values = [], [], []
    for k, (dy, dx) in enumerate(neighborhood_offsets(radius)):
        ys, xs = slice(0, hp - dy), slice(max(0, -dx), wp - max(0, dx))
        src = index[ys, xs].reshape(-1)
        dst = index[dy:hp, max(0, dx) : wp + min(0, dx)].reshape(-1)
        rows.append(src)
        cols.append(dst)
        values.append(aff[k, ys, xs].reshape(-1))
    rows, cols, values = torch.cat(rows), torch.cat(cols), torch.cat(values)
    diag = torch.arange(hp * wp)
    dense = torch.sparse_coo_tensor(
        torch.stack([torch.cat([rows, diag, cols]), torch.cat([cols, diag, rows])]),
        torch.cat([values, torch.ones(hp * wp), values]),
        (hp * wp, hp * wp),
        check_invariants=False,
    ).to_dense()
    n = height * width
    dense = dense.view(hp, wp, hp, wp)[:-radius, radius:-radius, :-radius, radius:-radius]
    dense = dense.reshape(n, n)
    # alive together as in IRN: A, A^beta, T and each squaring's product (4 N x N matrices)
    scaled = dense.pow(beta)
    trans = scaled / scaled.sum(dim=0, keepdim=True)
    for _ in range(exp_times):
        trans = trans @ trans
    walked = (x * (1 - edge)).reshape(x.shape[0], n) @ trans
    return walked.view(x.shape[0], 1, height, width)


def _builder(walk):
    def build(device: torch.device, height: int, width: int, exp_times: int = 8):
        x, edge = irn_inputs(height, width)
        x, edge = x.to(device), edge.to(device)
        return lambda: walk(x, edge, radius=5, beta=10, exp_times=exp_times)

    return build


case("irn_walk/irn-dense", time_exponent=3)(_builder(irn_dense_propagate))
case("irn_walk/affext")(_builder(propagate_to_edge))


@case("irn_walk/path-affinity")
def _path_affinity_case(device: torch.device, height: int, width: int, exp_times: int = 8):
    _, edge = irn_inputs(height, width)
    edge = edge[None].to(device)
    return lambda: path_affinity(edge, 5)


# --- measuring, one case per fresh process --------------------------------------------------
def measure(name: str, warm_up: bool = True, timeout_s: float = 900, **params) -> dict:
    """{"seconds", "peak_extra_bytes"} of one call, in a fresh interpreter with 2 threads."""
    cmd = [sys.executable, __file__, "--measure", name, json.dumps(params), str(int(warm_up))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout_s, check=False, env=env
    )
    if out.returncode:
        raise RuntimeError(f"measuring {name} {params} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child(name: str, params: str, warm_up: str) -> None:
    torch.set_num_threads(THREADS)
    result = measure_warm_call(name, "cpu", bool(int(warm_up)), **json.loads(params))
    print(json.dumps(result))


def dense_full(height: int, width: int) -> dict:
    """IRN's dense walk with exp_times 8: measured at 47x63; at 94x125 extrapolated from
    exp_times 0 and 1 (t0 + 8 (t1 - t0))."""
    if height * width <= 47 * 63:
        result = measure("irn_walk/irn-dense", warm_up=False, height=height, width=width)
        return {**result, "extrapolated": False}
    t0 = measure("irn_walk/irn-dense", warm_up=False, height=height, width=width, exp_times=0)
    t1 = measure("irn_walk/irn-dense", warm_up=False, height=height, width=width, exp_times=1)
    squaring = t1["seconds"] - t0["seconds"]
    return {
        "seconds": t0["seconds"] + 8 * squaring,
        "squaring_seconds": squaring,
        "peak_extra_bytes": t1["peak_extra_bytes"],
        "extrapolated": True,
    }


def labels_agree(height: int, width: int) -> float:
    """Fraction of map pixels where IRN's label (argmax over [0.25, rw / max]) is the same
    from both walks, float32 as IRN computes."""
    x, edge = irn_inputs(height, width)
    labels = []
    for walk in (irn_dense_propagate, propagate_to_edge):
        rw = walk(x, edge, radius=5, beta=10, exp_times=8)[:, 0]
        labels.append(F.pad(rw / rw.max(), (0, 0, 0, 0, 1, 0), value=0.25).argmax(0))
    return (labels[0] == labels[1]).double().mean().item()


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def table() -> str:
    lines = [
        "| map (N) | IRN dense walk | affext | speed-up | peak memory IRN / affext |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, (h, w) in SIZES.items():
        dense = dense_full(h, w)
        ours = measure("irn_walk/affext", height=h, width=w)
        note = (
            f" (extrapolated from its first squaring, {dense['squaring_seconds']:.1f} s)"
            if dense["extrapolated"]
            else ""
        )
        bound = ">= " if dense["extrapolated"] else ""
        lines.append(
            f"| {label} ({h * w}) | {bound}{dense['seconds']:.1f} s{note} | "
            f"{ours['seconds'] * 1e3:.1f} ms | {bound}{dense['seconds'] / ours['seconds']:.0f}x | "
            f"{_mib(dense['peak_extra_bytes'])} / {_mib(ours['peak_extra_bytes'])} |"
        )
    return "\n".join(lines)


# --- pytest entry points --------------------------------------------------------------------
@pytest.mark.parametrize("size", list(SIZES))
def test_affext_walk_and_path_affinity(size):
    h, w = SIZES[size]
    torch.set_num_threads(THREADS)
    x, edge = irn_inputs(h, w)
    walk = time_work(lambda: propagate_to_edge(x, edge), repeats=5)
    paths = time_work(lambda: path_affinity(edge[None]), repeats=20)
    peak = measure("irn_walk/affext", height=h, width=w)["peak_extra_bytes"]
    print(
        f"\n[{size}] affext propagate_to_edge {walk['median_s'] * 1e3:.1f} ms (of which "
        f"path_affinity {paths['median_s'] * 1e3:.2f} ms), peak extra {_mib(peak)}"
    )


@pytest.mark.parametrize("size", list(SIZES))
def test_irn_dense_walk(size):
    h, w = SIZES[size]
    dense = dense_full(h, w)
    print(f"\n[{size}] IRN dense walk {json.dumps(dense)}")


def test_labels_agree_47x63():
    torch.set_num_threads(THREADS)
    agree = labels_agree(47, 63)
    print(f"\n[47x63] labels equal at {agree:.2%} of pixels")
    assert agree >= 0.999


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        _child(*sys.argv[2:5])
    else:
        torch.set_num_threads(THREADS)
        print(f"torch {torch.__version__}, {THREADS} threads, float32, C = {CHANNELS}")
        print(table())
        print(f"labels equal at 47x63: {labels_agree(47, 63):.4%} of pixels")
