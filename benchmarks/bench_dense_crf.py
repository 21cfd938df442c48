"""Dense CRF, affext.dense_crf vs pydensecrf (psa's calls), psa's settings, 10 iterations, on
the same inputs in one run (affext.bench.cases: the sample photo at 375x500, a VOC image's
size; CAM-like scores with 3 labels as psa's la / ha, probabilities with 21 as rw_crf and
seg_crf).

    pytest benchmarks/bench_dense_crf.py -s --benchmark-json=dense_crf.json

docs/performance.md's targets: CPU (2 threads) >= 3x pydensecrf per 375x500 image with 3
labels, and psa's la + ha pair of one image (one affext call) >= 5x pydensecrf's two calls;
CUDA a 375x500 image with 21 labels in <= 10 ms (>= 100x pydensecrf), a batch of images
faster per image still. pydensecrf runs on the CPU whatever the device (its time is the
same reference on both). affext's cases skip themselves with "affext.dense_crf
unavailable" where the op is not built, pydensecrf's where it is not installed.
"""

import pytest

from affext.bench import build, synchronized, unavailable_reason

_times: dict = {}
SHAPES = {
    "3": dict(labels=3, kind="cam"),
    "21": dict(labels=21, kind="probs"),
    "la-ha": dict(labels=3, kind="cam", pair=True),
}
BATCH = 8


def _run(benchmark, device, impl, key, params, rounds):
    case = f"dense_crf/{impl}"
    missing = unavailable_reason(case)
    if missing:
        pytest.skip(missing)
    benchmark.group = f"dense CRF {device} 375x500 {key}"
    work = synchronized(build(case, device, **params), device)
    benchmark.pedantic(work, rounds=rounds, warmup_rounds=1)
    median = benchmark.stats.stats.median
    _times[(device, key, impl)] = median
    ours, ref = _times.get((device, key, "affext")), _times.get((device, key, "pydensecrf"))
    if ours and ref:
        images = 2 if params.get("pair") else params.get("batch", 1)
        print(
            f"\n[{device} dense CRF 375x500 {key}] affext {ours * 1e3:.1f} ms "
            f"({ours / images * 1e3:.2f} ms an image), pydensecrf {ref * 1e3:.1f} ms: "
            f"{ref / ours:.1f}x"
        )


@pytest.mark.parametrize("key", list(SHAPES))
@pytest.mark.parametrize("impl", ["affext", "pydensecrf"])
def test_dense_crf_vs_pydensecrf(benchmark, device, impl, key):
    # the ratio is printed by whichever of the two runs second
    rounds = {"affext": 20 if device == "cuda" else 5, "pydensecrf": 3}[impl]
    _run(benchmark, device, impl, key, SHAPES[key], rounds)


@pytest.mark.parametrize("impl", ["affext", "pydensecrf"])
def test_dense_crf_batch(benchmark, device, impl):
    """8 images of 375x500 with 21 labels in one affext call (pydensecrf: 8 calls); ms an
    image printed. On CUDA only: on the CPU a batch is the images one after the other."""
    if device != "cuda":
        pytest.skip("the batch is measured on CUDA (on the CPU it is per-image work)")
    key = f"batch{BATCH}-21"
    _run(
        benchmark, device, impl, key, dict(SHAPES["21"], batch=BATCH), 10 if impl == "affext" else 1
    )
