"""Affinity forward+backward, affext vs psa-dense: C=448, 56x56, radius 5, batch 1 and 8.

    pytest benchmarks/bench_affinity.py --benchmark-json=affinity.json
Prints the time and peak-extra-memory ratios; docs/performance.md's CPU target is >= 10x faster
and <= 1/50 of the extra memory.
"""

import pytest

SHAPE = dict(channels=448, size=56, radius=5)


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("impl", ["psa-dense", "affext", "affext-bf16"])
def test_affinity_fwd_bwd(benchmark, measure_case, device, impl, batch):
    if impl == "affext-bf16" and device != "cuda":
        pytest.skip("bfloat16 features: CUDA kernels only")
    benchmark.group = f"affinity fwd+bwd {device} B={batch}"
    rounds = 3 if impl == "psa-dense" else 10
    params = dict(SHAPE, batch=batch)
    measure_case(f"affinity/{impl}", params, f"B={batch}", "psa-dense", rounds)
