"""A run of the benchmark: its plan (which cases at which shapes), the decisions taken before
running each (skips from a memory estimate or a time prediction), and the JSON report."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .._extension import build_info
from .._version import __version__
from . import measure
from .cases import CASE_INFO, estimate_peak_bytes, unavailable_reason
from .report import fmt_bytes, fmt_seconds

SCHEMA = "affext-bench"
SCHEMA_VERSION = 1
AFFEXT = "affext"
REFERENCES = ("psa-dense", "torch-sparse", "pydensecrf", "afa-toco")
STATUSES = ("ok", "skipped", "failed")
# A peak-RSS growth is known to a page; below that a memory ratio would be noise over zero.
MEMORY_RATIO_FLOOR_BYTES = 4096


@dataclass(frozen=True)
class Point:
    """One benchmark entry: an op at one shape, run by affext and its references."""

    id: str
    op: str
    group: str
    title: str
    params: dict
    impls: dict  # implementation -> case name, affext first

    @property
    def n(self) -> int:
        """The map's area H * W (the dCRF's points give height and width, the others size)."""
        if "height" in self.params:
            return int(self.params["height"]) * int(self.params["width"])
        return int(self.params["size"]) ** 2


@dataclass
class Settings:
    repeats: int = 5
    warmup: int = 1
    budget_s: float = 60.0
    memory_limit_bytes: int = 0
    timeout_s: float = 300.0
    threads: int | None = None  # torch's intra-op threads; None: torch's default


# Shapes of a real run: a 448 crop is a 56x56 map at stride 8 (docs/method.md §3-5).
TRAIN = dict(batch=8, size=56, radius=5)
WALK = dict(channels=21, beta=8, iterations=256, radius=5)
SCALING_SIZES = (28, 56, 84, 112, 160, 224, 320, 448, 512)
# --quick: small enough for the test suite; the same code paths.
QUICK_TRAIN = dict(batch=1, size=28, radius=5)
QUICK_WALK = dict(channels=21, beta=8, iterations=32, radius=5)
QUICK_SCALING_SIZES = (12, 16, 24)
# The dense CRF of a VOC image (psa's la/ha: 3 labels; rw_crf / seg_crf: up to 21), 10
# iterations, psa's settings; on CUDA also a batch of 8 images in one call.
CRF = dict(height=375, width=500, iterations=10)
CRF_BATCH = 8
QUICK_CRF = dict(height=48, width=64, iterations=5)
# PAR at ToCo's training shape at half resolution (docs/performance.md).
PAR_SHAPE = dict(batch=2, channels=4, size=224, iterations=10)
QUICK_PAR = dict(batch=1, channels=2, size=32, iterations=2)
QUICK_NOTE = (
    "quick: smaller shapes (batch 1, 28x28 maps, C=64 features; walks of t=32 on "
    "maps up to 24x24; dCRF of 48x64 images, 5 iterations; PAR on 32x32), 3 repeats, 1 s "
    "budget; checks the harness, not affext's speed"
)
FULL_NOTE = (
    "full: the shapes of a real run (448 crop, batch 8), the walk up to 512x512, the "
    "dCRF of a 375x500 image, PAR at 224x224"
)


def plan(quick: bool = False, device: str = "cpu") -> list[Point]:
    """The benchmark entries of a run, in order. On a GPU the affinity also runs in bfloat16
    ("affext-bf16"; the CPU kernels take float32 and float64 only)."""
    train = QUICK_TRAIN if quick else TRAIN
    walk = QUICK_WALK if quick else WALK
    sizes = QUICK_SCALING_SIZES if quick else SCALING_SIZES
    channels = 64 if quick else 448
    walk_size = 16 if quick else 56
    aff = {AFFEXT: "affinity/affext", "psa-dense": "affinity/psa-dense"}
    if torch.device(device).type == "cuda":
        aff["affext-bf16"] = "affinity/affext-bf16"
    loss = {AFFEXT: "pair_loss/affext", "psa-dense": "pair_loss/psa"}
    rw = {
        AFFEXT: "random_walk/affext",
        "psa-dense": "random_walk/psa-dense",
        "torch-sparse": "random_walk/torch-sparse",
    }
    b, s, r = train["batch"], train["size"], train["radius"]
    points = [
        Point(
            "affinity/train",
            "affinity",
            "shapes",
            f"affinity fwd+bwd, B={b}, C={channels}, {s}x{s}, r={r}",
            dict(train, channels=channels),
            aff,
        ),
        Point(
            "pair_loss/train",
            "pair_loss",
            "shapes",
            f"pair loss fwd+bwd from labels, B={b}, {s}x{s}, r={r}",
            dict(train),
            loss,
        ),
    ]
    par = QUICK_PAR if quick else PAR_SHAPE
    points.append(
        Point(
            "par/toco",
            "par",
            "shapes",
            f"PAR (AFA / ToCo), B={par['batch']}, C={par['channels']}, "
            f"{par['size']}x{par['size']}, {par['iterations']} steps, "
            "dilations (1, 2, 4, 8, 12, 24)",
            dict(par),
            {AFFEXT: "par/affext", "afa-toco": "par/afa-toco"},
        )
    )
    t, c = walk["iterations"], walk["channels"]
    for live, words in (
        ("psa", "psa-shaped CAMs (bg + 2 classes live)"),
        ("all", f"all {c} channels live"),
    ):
        points.append(
            Point(
                f"random_walk/{walk_size}-{live}",
                "random_walk",
                "shapes",
                f"random walk, {walk_size}x{walk_size}, C={c}, t={t}, beta={walk['beta']}, {words}",
                dict(walk, size=walk_size, live=live),
                rw,
            )
        )
    points += crf_points(quick, device)
    for size in sizes:
        points.append(
            Point(
                f"random_walk/scaling-{size}",
                "random_walk",
                "scaling",
                f"random walk, {size}x{size} (N={size * size}), C={c}, t={t}, psa-shaped CAMs",
                dict(walk, size=size, live="psa"),
                rw,
            )
        )
    return points


def crf_points(quick: bool = False, device: str = "cpu") -> list[Point]:
    """The dense CRF's entries: one image with 3 labels (make-aff-labels' la or ha) and with
    21 (seg_crf), psa's la + ha pair of one image as one affext call against two pydensecrf
    calls, and on CUDA a batch of images in one call (pydensecrf: one call each)."""
    crf = QUICK_CRF if quick else CRF
    impls = {AFFEXT: "dense_crf/affext", "pydensecrf": "dense_crf/pydensecrf"}
    h, w, t = crf["height"], crf["width"], crf["iterations"]
    shapes = [
        ("3", dict(labels=3, kind="cam"), "3 labels (la or ha)"),
        ("21", dict(labels=21, kind="probs"), "21 labels"),
        ("la-ha", dict(labels=3, kind="cam", pair=True), "la + ha of one image, 3 labels"),
    ]
    if torch.device(device).type == "cuda":
        b = 2 if quick else CRF_BATCH
        shapes.append((f"batch{b}-21", dict(labels=21, kind="probs", batch=b), f"{b} images"))
    return [
        Point(
            f"dense_crf/{h}x{w}-{key}",
            "dense_crf",
            "shapes",
            f"dense CRF, {h}x{w}, {words}, {t} iterations, psa's settings",
            dict(crf, **params),
            impls,
        )
        for key, params, words in shapes
    ]


def default_settings(device: str, quick: bool) -> Settings:
    settings = Settings(repeats=3, budget_s=1.0, timeout_s=30.0) if quick else Settings()
    settings.memory_limit_bytes = _available_memory(device)
    return settings


def _available_memory(device: str) -> int:
    """What one implementation may use: most of the free GPU memory, or half the free RAM on
    the CPU (the timed call runs here while a probe child holds its own copy)."""
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(0.9 * free)
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return int(0.5 * info["MemAvailable"])
    except (OSError, KeyError, ValueError):
        return 8 << 30


def environment(device: str) -> dict:
    """The machine and software a report was measured with."""
    dev = torch.device(device)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    try:
        with open("/proc/meminfo") as f:
            total = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        total = None
    return {
        "affext": __version__,
        "build": build_info(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": gpu,
        "dtype": "float32",
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "memory_total_bytes": total,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def skip_reason(
    impl: str,
    estimated_bytes: int | None,
    memory_limit: int,
    predicted_s: float | None,
    budget_s: float,
    basis: str = "",
) -> str | None:
    """Why an implementation must not run at a point, or None: from its estimated peak
    memory against the limit, then from its predicted time against the budget."""
    if estimated_bytes is not None and estimated_bytes > memory_limit:
        return (
            f"skipped: {impl} needs ~{fmt_bytes(estimated_bytes)} (estimate), over the "
            f"{fmt_bytes(memory_limit)} memory limit"
        )
    if predicted_s is not None and predicted_s > budget_s:
        return (
            f"skipped: {impl} would take ~{fmt_seconds(predicted_s)} a call "
            f"({basis}), over the {fmt_seconds(budget_s)} budget"
        )
    return None


class Runner:
    """Runs the points of a plan on one device and gathers the report's entries."""

    def __init__(
        self,
        device: str,
        settings: Settings,
        probe: measure.MemoryProbe | None,
        log: Callable[[str], None],
    ):
        self.device = device
        self.settings = settings
        self.probe = probe
        self.log = log
        self._done: dict[tuple, dict] = {}  # (case, params) -> result, reused
        self._history: dict[tuple, list] = {}  # (case, params but size) -> [(n, seconds)]

    def run(self, point: Point) -> dict:
        results = {}
        for impl, case_name in point.impls.items():
            results[impl] = self._result(impl, case_name, point)
            self.log(f"  {point.id:28s} {impl:13s} {_describe(results[impl])}")
        entry = {
            "id": point.id,
            "op": point.op,
            "group": point.group,
            "title": point.title,
            "params": dict(point.params),
            "n": point.n,
            "results": results,
            "ratios": ratios(results),
        }
        return entry

    def _result(self, impl: str, case_name: str, point: Point) -> dict:
        key = (case_name, json.dumps(point.params, sort_keys=True))
        if key not in self._done:
            self._done[key] = self._measure(impl, case_name, point)
            if self._done[key]["status"] == "ok":
                self._history.setdefault(self._series(case_name, point), []).append(
                    (point.n, self._done[key]["time"]["median_s"])
                )
        return dict(self._done[key])

    @staticmethod
    def _series(case_name: str, point: Point) -> tuple:
        rest = {k: v for k, v in point.params.items() if k != "size"}
        return case_name, json.dumps(rest, sort_keys=True)

    def _predict(self, case_name: str, point: Point) -> tuple[float | None, str]:
        smaller = [
            (n, t) for n, t in self._history.get(self._series(case_name, point), []) if n < point.n
        ]
        if not smaller:
            return None, ""
        n0, t0 = max(smaller)
        exponent = CASE_INFO[case_name].time_exponent
        side = math.isqrt(n0)
        return (
            t0 * (point.n / n0) ** exponent,
            f"{fmt_seconds(t0)} at {side}x{side}, time ~ N^{exponent:g}",
        )

    def skip(self, impl: str, case_name: str, point: Point) -> str | None:
        """Why not to run this implementation at this point, or None: it cannot run in this
        installation (unavailable_reason), or see skip_reason."""
        missing = unavailable_reason(case_name)
        if missing:
            return f"skipped: {missing}"
        predicted, basis = self._predict(case_name, point)
        return skip_reason(
            impl,
            estimate_peak_bytes(case_name, **point.params),
            self.settings.memory_limit_bytes,
            predicted,
            self.settings.budget_s,
            basis,
        )

    def _warm_up(self, case_name: str, point: Point) -> bool:
        # A call predicted to take more than a tenth of the budget is measured without a
        # warm-up call before it: its one-time costs are small beside it, and time is not.
        predicted, _ = self._predict(case_name, point)
        return predicted is None or predicted < self.settings.budget_s / 10

    def _measure(self, impl: str, case_name: str, point: Point) -> dict:
        s = self.settings
        estimate = estimate_peak_bytes(case_name, **point.params)
        result = {"case": case_name, "status": "ok", "estimated_peak_bytes": estimate}
        reason = self.skip(impl, case_name, point)
        if reason:
            return dict(result, status="skipped", reason=reason)
        try:
            # One warm call alone first: its peak memory, and whether it is too long to repeat.
            warm_up = self._warm_up(case_name, point)
            one = measure.measure_call(
                case_name,
                self.device,
                timeout_s=s.timeout_s,
                probe=self.probe,
                warm_up=warm_up,
                **point.params,
            )
            if one["seconds"] * (s.warmup + 1) > s.budget_s:
                timing = {
                    "median_s": one["seconds"],
                    "min_s": one["seconds"],
                    "max_s": one["seconds"],
                    "repeats": 1,
                }
            else:
                work = measure.build(case_name, self.device, **point.params)
                # Repeats stop after half the budget: the other half is the probe's.
                timing = measure.time_work(work, self.device, s.repeats, s.warmup, s.budget_s / 2)
                del work
        except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            _release(self.device)
            return dict(result, status="failed", reason=f"failed: {_first_line(exc)}")
        _release(self.device)
        return dict(
            result,
            time=timing,
            peak_extra_bytes=int(one["peak_extra_bytes"]),
            memory_after_warm_up=warm_up,
        )


def _release(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _describe(result: dict) -> str:
    if result["status"] != "ok":
        return result["reason"]
    t = result["time"]
    return (
        f"{fmt_seconds(t['median_s'])} (min {fmt_seconds(t['min_s'])}, max "
        f"{fmt_seconds(t['max_s'])}, {t['repeats']} calls)"
        f", peak +{fmt_bytes(result['peak_extra_bytes'])}"
    )


def ratios(results: dict) -> dict:
    """{reference: {"time", "memory"}}: reference / affext, for each reference that ran."""
    ours = results.get(AFFEXT)
    if not ours or ours["status"] != "ok":
        return {}
    out = {}
    for impl, res in results.items():
        if impl == AFFEXT or res["status"] != "ok":
            continue
        out[impl] = {
            "time": res["time"]["median_s"] / ours["time"]["median_s"],
            "memory": (
                max(res["peak_extra_bytes"], MEMORY_RATIO_FLOOR_BYTES)
                / max(ours["peak_extra_bytes"], MEMORY_RATIO_FLOOR_BYTES)
            ),
        }
    return out


def run_bench(
    device: str = "cpu",
    quick: bool = False,
    settings: Settings | None = None,
    points: list[Point] | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> dict:
    """Run the benchmark and return the report (the JSON document described above)."""
    settings = settings or default_settings(device, quick)
    points = plan(quick, device) if points is None else points
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": created,
        "mode": "quick" if quick else "full",
        "note": QUICK_NOTE if quick else FULL_NOTE,
        "device": torch.device(device).type,
        "settings": {
            "repeats": settings.repeats,
            "warmup": settings.warmup,
            "budget_s": settings.budget_s,
            "memory_limit_bytes": settings.memory_limit_bytes,
            "timeout_s": settings.timeout_s,
            "threads": settings.threads,
            "memory_ratio_floor_bytes": MEMORY_RATIO_FLOOR_BYTES,
        },
        "environment": None,
        "benchmarks": [],
    }
    threads = torch.get_num_threads()
    probe = None
    try:
        if settings.threads:
            torch.set_num_threads(settings.threads)
        report["environment"] = environment(device)
        if torch.device(device).type == "cpu":
            probe = measure.MemoryProbe(threads=settings.threads)
        with warnings.catch_warnings():
            measure.quiet_reference_warnings()
            runner = Runner(device, settings, probe, log)
            for point in points:
                report["benchmarks"].append(runner.run(point))
    finally:
        if probe is not None:
            probe.close()
        torch.set_num_threads(threads)
    return report
