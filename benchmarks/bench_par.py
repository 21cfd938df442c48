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

SHAPES = {
    "half-res": dict(batch=2, channels=4, size=224, iterations=10),
    "toco-step": dict(batch=4, channels=42, size=224, iterations=10, live="toco"),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("impl", ["afa-toco", "affext"])
def test_par(benchmark, measure_case, device, impl, shape):
    if shape == "toco-step" and device != "cuda":
        pytest.skip("ToCo's full training step: the GPU target")
    params = SHAPES[shape]
    benchmark.group = f"PAR {device} {shape}"
    rounds = 3 if impl == "afa-toco" else 10
    measure_case(f"par/{impl}", params, f"PAR {shape}", "afa-toco", rounds)
