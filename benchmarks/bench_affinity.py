"""Affinity forward+backward, affext vs psa-dense: C=448, 56x56, radius 5, batch 1 and 8.

    pytest benchmarks/bench_affinity.py --benchmark-json=affinity.json
Prints the time and peak-extra-memory ratios; docs/performance.md's CPU target is >= 10x faster
and <= 1/50 of the extra memory.
"""

import pytest

from affext.bench import build, peak_memory, synchronized

SHAPE = dict(channels=448, size=56, radius=5)
_times: dict = {}


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("impl", ["psa-dense", "affext", "affext-bf16"])
def test_affinity_fwd_bwd(benchmark, device, impl, batch):
    if impl == "affext-bf16" and device != "cuda":
        pytest.skip("bfloat16 features: CUDA kernels only")
    benchmark.group = f"affinity fwd+bwd {device} B={batch}"
    work = synchronized(build(f"affinity/{impl}", device, batch=batch, **SHAPE), device)
    benchmark.pedantic(work, rounds=3 if impl == "psa-dense" else 10, warmup_rounds=1)
    mem = peak_memory(f"affinity/{impl}", device, batch=batch, **SHAPE)
    benchmark.extra_info["peak_extra_bytes"] = mem
    _times[(device, batch, impl)] = (benchmark.stats.stats.median, mem)
    other = _times.get((device, batch, "psa-dense"))
    if impl == "affext" and other:
        print(
            f"\n[{device} B={batch}] affext {benchmark.stats.stats.median * 1e3:.1f} ms, "
            f"{mem / 2**20:.1f} MiB extra; psa-dense {other[0] * 1e3:.1f} ms, "
            f"{other[1] / 2**20:.1f} MiB extra; "
            f"speed-up {other[0] / benchmark.stats.stats.median:.1f}x, "
            f"memory 1/{other[1] / max(mem, 1):.0f}"
        )
