"""PAR (AFA / ToCo's pixel-adaptive refinement), affext vs their formulation (every neighbour
materialised, affext.reference.par), on the same inputs in one run: dilations
(1, 2, 4, 8, 12, 24), 10 steps, B=2, 4 channels, 224x224 (ToCo's training shape at half
resolution), and ToCo's training step on the GPU (B=4, 21 channels of which each image's
classes + background live, both thresholds: 42 channels).

    pytest benchmarks/bench_par.py -s --benchmark-json=par.json
Prints the time and peak-extra-memory ratios; docs/performance.md's targets: CPU >= 20x faster
and >= 10x less peak memory, CUDA >= 20x.
"""

import pytest

from affext.bench import build, peak_memory, synchronized

SHAPES = {
    "half-res": dict(batch=2, channels=4, size=224, iterations=10),
    "toco-step": dict(batch=4, channels=42, size=224, iterations=10, live="toco"),
}
_times: dict = {}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("impl", ["afa-toco", "affext"])
def test_par(benchmark, device, impl, shape):
    if shape == "toco-step" and device != "cuda":
        pytest.skip("ToCo's full training step: the GPU target")
    params = SHAPES[shape]
    benchmark.group = f"PAR {device} {shape}"
    work = synchronized(build(f"par/{impl}", device, **params), device)
    benchmark.pedantic(work, rounds=3 if impl == "afa-toco" else 10, warmup_rounds=1)
    mem = peak_memory(f"par/{impl}", device, **params)
    benchmark.extra_info["peak_extra_bytes"] = mem
    _times[(device, shape, impl)] = (benchmark.stats.stats.median, mem)
    other = _times.get((device, shape, "afa-toco"))
    if impl == "affext" and other:
        print(
            f"\n[{device} PAR {shape}] affext {benchmark.stats.stats.median * 1e3:.1f} ms, "
            f"{mem / 2**20:.1f} MiB extra; afa-toco {other[0] * 1e3:.1f} ms, "
            f"{other[1] / 2**20:.1f} MiB extra; "
            f"speed-up {other[0] / benchmark.stats.stats.median:.1f}x, "
            f"memory 1/{other[1] / max(mem, 1):.0f}"
        )
