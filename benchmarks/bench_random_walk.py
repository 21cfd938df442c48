"""Random walk, affext vs psa-dense vs torch-sparse (CSR), psa's region, beta 8, t = 256,
C = 21, on the same inputs in one run.

    pytest benchmarks/bench_random_walk.py -s --benchmark-json=random_walk.json
docs/performance.md's CPU targets at 56x56: >= 30x psa-dense; >= 2x torch-sparse with all 21
channels live and >= 5x on psa-shaped CAMs (background + two classes live). psa-dense is run
where it finishes in reasonable time (56x56: ~3 s, 84x84: ~30 s); affext alone at 224x224
and 512x512, where the dense N x N matrix would need 10 GB and 275 GB.
docs/performance.md's GPU targets: 56x56 psa-shaped >= 10x psa-dense and >= 5x torch-sparse (about
1 ms), 16 maps of 63x63 in one call >= 10,000 maps/s, 512x512 <= 10 ms.
"""

import pytest

from affext import random_walk
from affext.bench import build, synchronized
from affext.bench.cases import walk_inputs

_times: dict = {}
DENSE_MAX_SIZE = 84


def _run(benchmark, device, impl, size, live, rounds):
    benchmark.group = f"random walk {device} {size}x{size} live={live}"
    work = synchronized(build(f"random_walk/{impl}", device, size=size, live=live), device)
    benchmark.pedantic(work, rounds=rounds, warmup_rounds=1 if rounds > 1 else 0)
    median = benchmark.stats.stats.median
    _times[(device, size, live, impl)] = median
    ours = _times.get((device, size, live, "affext"))
    if impl != "affext" and ours:
        print(
            f"\n[{device} {size}x{size} live={live}] affext {ours * 1e3:.1f} ms, {impl} "
            f"{median * 1e3:.1f} ms: {median / ours:.1f}x"
        )


@pytest.mark.parametrize("live", ["psa", "all"])
@pytest.mark.parametrize("size", [56, 84, 112])
@pytest.mark.parametrize("impl", ["affext", "torch-sparse", "psa-dense"])
def test_walk_vs_references(benchmark, device, impl, size, live):
    if impl == "psa-dense" and (size > DENSE_MAX_SIZE or (size > 56 and live == "psa")):
        pytest.skip(
            f"psa-dense at {size}x{size} costs 8 N^3 = {8 * (size * size) ** 3:.1e} FLOP per image"
        )
    rounds = {"affext": 10, "torch-sparse": 5, "psa-dense": 1}[impl]
    _run(benchmark, device, impl, size, live, rounds)


@pytest.mark.parametrize("size", [224, 512])
def test_walk_large_maps(benchmark, device, size):
    _run(benchmark, device, "affext", size, "psa", 3)


@pytest.mark.parametrize("live", ["psa", "all"])
def test_walk_batch_of_maps(benchmark, device, live):
    """16 maps of 63x63 (a VOC image's map at stride 8) in one call, as a batched make-rw
    walks them; maps/s printed."""
    maps = 16
    cam, aff = walk_inputs(device, 63, 21, live)
    cam = cam.expand(maps, -1, -1, -1).contiguous()
    aff = aff.expand(maps, -1, -1, -1).contiguous()

    work = synchronized(lambda: random_walk(cam, aff), device)
    benchmark.group = f"random walk {device} {maps} maps of 63x63 live={live}"
    benchmark.pedantic(work, rounds=10 if device == "cuda" else 2, warmup_rounds=1)
    median = benchmark.stats.stats.median
    rate = maps / median
    print(f"\n[{device} {maps} x 63x63 live={live}] {median * 1e3:.2f} ms: {rate:.0f} maps/s")
