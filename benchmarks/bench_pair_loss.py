"""Balanced pair loss forward+backward w.r.t. aff, affext vs psa: batch 8, 56x56, radius 5.

    pytest benchmarks/bench_pair_loss.py -s --benchmark-json=pair_loss.json
psa's side builds its three (B, K, n_from) float masks from the label map (data.py) and
computes train_aff's loss; affext classifies the pairs inside its kernel. Prints the time and
peak-extra-memory ratios; docs/performance.md's target is faster, without (B, K, n) float masks.
"""

import pytest

from affext.bench import build, peak_memory, synchronized

SHAPE = dict(batch=8, size=56, radius=5)
_times: dict = {}


@pytest.mark.parametrize("impl", ["psa", "affext"])
def test_pair_loss_fwd_bwd(benchmark, device, impl):
    benchmark.group = f"pair loss fwd+bwd {device} B={SHAPE['batch']}"
    work = synchronized(build(f"pair_loss/{impl}", device, **SHAPE), device)
    benchmark.pedantic(work, rounds=20, warmup_rounds=2)
    mem = peak_memory(f"pair_loss/{impl}", device, **SHAPE)
    benchmark.extra_info["peak_extra_bytes"] = mem
    _times[(device, impl)] = (benchmark.stats.stats.median, mem)
    other = _times.get((device, "psa"))
    if impl == "affext" and other:
        ours = benchmark.stats.stats.median
        print(
            f"\n[{device} B={SHAPE['batch']}] affext {ours * 1e3:.2f} ms, "
            f"{mem / 2**20:.2f} MiB extra; psa {other[0] * 1e3:.2f} ms, "
            f"{other[1] / 2**20:.2f} MiB extra; speed-up {other[0] / ours:.1f}x, "
            f"memory ratio {other[1] / max(mem, 1):.1f}"
        )
