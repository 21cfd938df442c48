"""Side-by-side measurement of affext against the dense references: time and peak memory.

A *case* is a named function that, given its parameters and a device, prepares inputs and
returns a zero-argument callable doing the measured work. Cases are registered with
`@case("name")`; the benchmarks (benchmarks/) and `affext bench` time the same callables.

Peak memory: on CUDA torch.cuda.max_memory_allocated around one call; on the CPU the growth
of the process's peak RSS over one call, in a fresh subprocess per case (so that earlier
allocations cannot hide it), as `python -m affext.measure CASE JSON-PARAMS`.
"""
from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch

Work = Callable[[], object]
CASES: dict[str, Callable[..., Work]] = {}


def case(name: str):
    """Register a case builder: builder(device, **params) -> zero-argument callable."""
    def register(builder):
        CASES[name] = builder
        return builder
    return register


def build(name: str, device: str = "cpu", **params) -> Work:
    if name not in CASES:
        raise KeyError(f"unknown case {name!r}; known: {sorted(CASES)}")
    return CASES[name](torch.device(device), **params)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_work(work: Work, device: str = "cpu", repeats: int = 5, warmup: int = 1,
              budget_s: float | None = None) -> dict:
    """Median and spread of `repeats` timed calls (after `warmup`), in seconds.

    With budget_s, stops early once that much time has been spent (at least one call).
    """
    dev = torch.device(device)
    for _ in range(warmup):
        work()
    _sync(dev)
    times: list[float] = []
    spent = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        _sync(dev)
        times.append(time.perf_counter() - start)
        spent += times[-1]
        if budget_s is not None and spent > budget_s:
            break
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": len(times)}


def _peak_rss_bytes() -> int:
    # VmHWM belongs to this process image; ru_maxrss survives exec on Linux, so a child of a
    # big process (pytest after running a dense reference) would start at its parent's peak.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def peak_memory(name: str, device: str = "cpu", timeout_s: float = 600, **params) -> int:
    """Peak extra memory (bytes) of one call of a case, beyond its prepared inputs."""
    dev = torch.device(device)
    if dev.type == "cuda":
        work = build(name, device, **params)
        _sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        work()
        _sync(dev)
        return torch.cuda.max_memory_allocated(dev) - base
    proc = subprocess.run([sys.executable, "-m", "affext.measure", name, json.dumps(params)],
                          capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of {name} failed:\n{proc.stderr[-2000:]}")
    return int(proc.stdout.strip().splitlines()[-1])


def _register_builtin_cases() -> None:
    # Importing the modules registers their cases.
    from . import bench_cases  # noqa: F401


def _main(argv: list[str]) -> None:
    # Run as __main__, this file is a second copy of the module: use the package's registry.
    from affext import measure

    measure._register_builtin_cases()
    name, params = argv[0], json.loads(argv[1])
    work = measure.build(name, "cpu", **params)
    base = _peak_rss_bytes()
    work()
    print(_peak_rss_bytes() - base)


if __name__ == "__main__":
    _main(sys.argv[1:])
