"""make-aff-labels and make-rw stage times with each dCRF backend, same run, same images.

The stages as `affext run` runs them with the tiny preset (make-aff-labels on make-cam's
CAMs at a long side of 160 px; make-rw at 320 px, 256 walk steps, with the rw_crf labels), on
the embedded synthetic set, networks of random weights (bench_dist's preparation). Each
backend's run of a stage writes into a fresh folder; the runs alternate between the backends
(`--repeats` rounds), and the table gives each one's median. "affext" runs affext.dense_crf
in the stage's process (torch's threads); "pydensecrf" in `crf_workers` processes (the
default: half the cores, 1 to 8, and those of `--crf-workers`).

    python benchmarks/bench_crf_stages.py                  # 16 images, CPU
    python benchmarks/bench_crf_stages.py --images 64 --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_dist import _prepare, _stage_configs

from affext.stages.aff_labels import make_aff_labels
from affext.stages.crf import CRFConfig, default_crf_workers
from affext.stages.make_rw import make_rw


def _run(stage: str, voc: Path, root: Path, out: Path, device: str, backend: str, workers: int):
    """One timed run of `stage` with the dCRF `backend`: seconds."""
    cfg = _stage_configs(device)
    ids = (voc / "ImageSets" / "Segmentation" / "trainval.txt").read_text().split()
    cams = root / "cams" / "cam"
    start = time.perf_counter()
    if stage == "make-aff-labels":
        sc = cfg.aff_labels
        sc.crf, sc.crf_workers, sc.device = CRFConfig(backend=backend), workers, device
        make_aff_labels(voc, ids, cams, out, sc, progress=False)
    else:
        sc = cfg.make_rw
        sc.crf, sc.crf_workers = CRFConfig(backend=backend), workers
        make_rw(voc, ids, cams, root / "nets" / "aff_net.pt", out, sc, progress=False)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--crf-workers", type=int, nargs="+", default=[default_crf_workers()],
        help="pydensecrf processes to time (default: the stages' default)",
    )  # fmt: skip
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    cases = [("affext", 0)] + [("pydensecrf", w) for w in args.crf_workers]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        voc = _prepare(root, args.images, args.device)
        for stage in ("make-aff-labels", "make-rw"):
            times: dict = {c: [] for c in cases}
            for r in range(args.repeats):
                for backend, workers in cases:
                    out = root / f"{stage}-{backend}-{workers}-{r}"
                    t = _run(stage, voc, root, out, args.device, backend, workers)
                    times[(backend, workers)].append(t)
                    print(f"{stage} {backend} ({workers} processes): {t:.2f} s", flush=True)
            base = statistics.median(times[cases[0]])
            for (backend, workers), ts in times.items():
                median = statistics.median(ts)
                rows.append(
                    {
                        "stage": stage,
                        "backend": backend,
                        "crf_processes": workers,
                        "images": args.images,
                        "seconds": [round(t, 3) for t in ts],
                        "median_s": round(median, 3),
                        "vs_affext": round(median / base, 2),
                    }
                )
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, {args.device}, torch {torch.__version__}, "
        f"{args.images} images, median of {args.repeats}"
    )
    print("| stage | dCRF backend | processes | s (median) | time / affext's |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['stage']} | {r['backend']} | {r['crf_processes']} | {r['median_s']:.2f} | "
            f"{r['vs_affext']:.2f}x |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
