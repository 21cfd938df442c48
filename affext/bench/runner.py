"""A run of the benchmark: its plan's entries (points.py) run in turn, the decisions taken
before running each (skips from a memory estimate or a time prediction), and the JSON
report (with the machine's description, machine.py)."""

from __future__ import annotations

import datetime
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import measure
from .cases import CASE_INFO, estimate_peak_bytes, unavailable_reason
from .machine import _available_memory, environment

# the plan's names, importable from here as before points.py held them
from .points import (  # noqa: F401
    AFFEXT,
    CRF,
    CRF_BATCH,
    FULL_NOTE,
    PAR_SHAPE,
    QUICK_CRF,
    QUICK_NOTE,
    QUICK_PAR,
    QUICK_SCALING_SIZES,
    QUICK_TRAIN,
    QUICK_WALK,
    SCALING_SIZES,
    TRAIN,
    WALK,
    Point,
    crf_points,
    plan,
)
from .report import fmt_bytes, fmt_seconds

SCHEMA = "affext-bench"
SCHEMA_VERSION = 1
REFERENCES = ("psa-dense", "torch-sparse", "pydensecrf", "afa-toco")
STATUSES = ("ok", "skipped", "failed")
# A peak-RSS growth is known to a page; below that a memory ratio would be noise over zero.
MEMORY_RATIO_FLOOR_BYTES = 4096


@dataclass
class Settings:
    """How each implementation is measured: `repeats` timed calls after `warmup` calls
    within `budget_s` seconds, skipped where its estimated peak exceeds
    `memory_limit_bytes` (default_settings: from the free memory), `timeout_s` a call
    (affext.bench's docstring; the report's "settings")."""

    repeats: int = 5
    warmup: int = 1
    budget_s: float = 60.0
    memory_limit_bytes: int = 0
    timeout_s: float = 300.0
    threads: int | None = None  # torch's intra-op threads; None: torch's default


def default_settings(device: str, quick: bool) -> Settings:
    settings = Settings(repeats=3, budget_s=1.0, timeout_s=30.0) if quick else Settings()
    settings.memory_limit_bytes = _available_memory(device)
    return settings


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
