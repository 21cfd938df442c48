"""Balanced pair loss forward+backward w.r.t. aff, affext vs psa: batch 8, 56x56, radius 5.

    pytest benchmarks/bench_pair_loss.py -s --benchmark-json=pair_loss.json
psa's side builds its three (B, K, n_from) float masks from the label map (data.py) and
computes train_aff's loss; affext classifies the pairs inside its kernel. Prints the time and
peak-extra-memory ratios; docs/performance.md's target is faster, without (B, K, n) float masks.
"""

import pytest

SHAPE = dict(batch=8, size=56, radius=5)


@pytest.mark.parametrize("impl", ["psa", "affext"])
def test_pair_loss_fwd_bwd(benchmark, measure_case, device, impl):
    benchmark.group = f"pair loss fwd+bwd {device} B={SHAPE['batch']}"
    key = f"B={SHAPE['batch']}"
    measure_case(f"pair_loss/{impl}", SHAPE, key, "psa", rounds=20, warmup_rounds=2)
