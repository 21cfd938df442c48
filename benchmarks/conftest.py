import pytest
import torch

from affext.bench import build, peak_memory, synchronized

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (device, key, implementation) -> (median s, peak extra bytes) of the cases measured so far
_MEASURED: dict = {}


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def measure_case(benchmark, device):
    """measure_case(case, params, key, reference, rounds, warmup_rounds=1): time the
    affext.bench case ("op/implementation") on the device with pytest-benchmark and measure
    its peak extra memory; once affext's case and the reference's have run at the same key,
    print the time and memory ratios."""

    def run(case, params, key, reference, rounds, warmup_rounds=1):
        work = synchronized(build(case, device, **params), device)
        benchmark.pedantic(work, rounds=rounds, warmup_rounds=warmup_rounds)
        mem = peak_memory(case, device, **params)
        benchmark.extra_info["peak_extra_bytes"] = mem
        ours = benchmark.stats.stats.median
        impl = case.split("/", 1)[1]
        _MEASURED[(device, key, impl)] = (ours, mem)
        other = _MEASURED.get((device, key, reference))
        if impl == "affext" and other:
            print(
                f"\n[{device} {key}] affext {ours * 1e3:.2f} ms, {mem / 2**20:.2f} MiB extra; "
                f"{reference} {other[0] * 1e3:.2f} ms, {other[1] / 2**20:.2f} MiB extra; "
                f"speed-up {other[0] / ours:.1f}x, memory 1/{other[1] / max(mem, 1):.0f}"
            )

    return run
