"""make-cam and make-rw images/s with 1, 2, ... processes under torchrun (affext.dist).

The stages as `affext run` runs them with the tiny preset (make-cam at a long side of 160 px,
four scales and flips; make-rw at 320 px, 256 walk steps, with the dCRF labels), on the
embedded synthetic set, networks of random weights (speed does not depend on them). Each
launch times the stage between two barriers, from the first rank starting to the last
finishing, model loading included; the CAMs make-rw reads come from one earlier make-cam.
Every rank runs on one thread (OMP_NUM_THREADS=1, no DataLoader or dCRF workers), so N
processes use N cores; on GPUs (NCCL) each process takes the GPU of its local rank.

    python benchmarks/bench_dist.py                        # 1 and 2 processes, CPU
    python benchmarks/bench_dist.py --nproc 1 2 4 --images 64 --json out.json
    python benchmarks/bench_dist.py --device cuda --nproc 1 2 4 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _stage_configs(device: str):
    from affext.stages.config import RunConfig

    cfg = RunConfig.for_backbone("tiny", device=device, num_workers=0)
    cfg.make_rw.crf_workers = 0
    return cfg


def _worker(voc: str, work: str, device: str, stage: str) -> None:
    """One rank of a timed launch: run `stage` into WORK, rank 0 writes WORK/time.json."""
    import torch

    from affext import dist
    from affext.stages.make_cam import make_cam
    from affext.stages.make_rw import make_rw

    torch.set_num_threads(1)
    cfg = _stage_configs(device)
    ids = (Path(voc) / "ImageSets" / "Segmentation" / "trainval.txt").read_text().split()
    work = Path(work)
    nets = work.parent / "nets"
    dist.barrier()
    start = time.perf_counter()
    if stage == "make-cam":
        make_cam(voc, ids, nets / "cam_net.pt", work / "out", cfg.make_cam, progress=False)
    else:
        cams = work.parent / "cams" / "cam"
        make_rw(voc, ids, cams, nets / "aff_net.pt", work / "out", cfg.make_rw, progress=False)
    dist.barrier()
    seconds = time.perf_counter() - start
    if dist.is_main():
        (work / "time.json").write_text(json.dumps({"images": len(ids), "seconds": seconds}))
    dist.cleanup()


def _prepare(root: Path, images: int, device: str) -> Path:
    """The dataset, two networks of random weights, and the CAMs make-rw reads."""
    import torch

    from affext.data import SynthConfig, VOCDataset, make_synthetic_voc
    from affext.models import save_checkpoint
    from affext.stages.make_cam import make_cam
    from affext.stages.train_aff import build_aff_net
    from affext.stages.train_cam import build_cam_net

    torch.manual_seed(0)
    voc = make_synthetic_voc(root / "voc", SynthConfig(num_train=images, num_val=0), False)
    nets = root / "nets"
    classes = VOCDataset(voc).num_classes  # the synthetic set's, not VOC's 20
    save_checkpoint(build_cam_net("tiny", num_classes=classes).eval(), nets / "cam_net.pt")
    save_checkpoint(build_aff_net("tiny").eval(), nets / "aff_net.pt")
    ids = (voc / "ImageSets" / "Segmentation" / "trainval.txt").read_text().split()
    cfg = _stage_configs(device)
    make_cam(voc, ids, nets / "cam_net.pt", root / "cams", cfg.make_cam, progress=False)
    return voc


def _launch(nproc: int, voc: Path, work: Path, device: str, stage: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={nproc}", __file__, "--worker", str(voc), str(work), device, stage]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads((work / "time.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        voc = _prepare(root, args.images, args.device)
        for stage in ("make-cam", "make-rw"):
            for n in args.nproc:
                work = root / f"{stage}-{n}"
                t = _launch(n, voc, work, args.device, stage)
                rows.append(
                    {
                        "stage": stage,
                        "processes": n,
                        "images": t["images"],
                        "seconds": round(t["seconds"], 2),
                        "images_per_s": round(t["images"] / t["seconds"], 2),
                    }
                )
                print(
                    f"{stage:<8} {n} process(es): {t['images']} images in {t['seconds']:.1f} s, "
                    f"{t['images'] / t['seconds']:.2f} images/s",
                    flush=True,
                )
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.device}")
    print("| stage | processes | images/s | speed-up |\n|---|---:|---:|---:|")
    first = rows[0]["processes"]
    for r in rows:
        base = next(b for b in rows if b["stage"] == r["stage"] and b["processes"] == first)
        print(
            f"| {r['stage']} | {r['processes']} | {r['images_per_s']:.2f} | "
            f"{r['images_per_s'] / base['images_per_s']:.2f}x |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(*sys.argv[2:])
    else:
        main()
