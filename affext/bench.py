"""`affext bench`: affext against psa-dense and torch-sparse, side by side in one run.

    affext bench [--device cpu|cuda] [--quick] [--json FILE] [--plot FILE.png]
    python -m affext.bench ...          (the same, without the `affext` command)

Every implementation is timed in this one process on the same inputs (the cases of
affext.bench_cases, seeded), so that the ratios hold on a shared, noisy machine
(performance.md). Measured:

- affinity forward+backward at a training step's shape (448 crop: C=448, 56x56, radius 5,
  batch 8): affext vs psa-dense;
- the balanced pair loss forward+backward from a label map, same shape: affext vs psa-dense
  (psa's mask build + train_aff's loss);
- the random walk of one image (C=21, beta 8, t=256, radius 5, from precomputed affinities)
  on a 56x56 map, with psa-shaped CAMs (background + two classes live, the others exactly
  zero) and with all 21 channels live: affext vs psa-dense and torch-sparse;
- a scaling sweep of the walk (psa-shaped CAMs) over map sizes up to 512x512.

A reference that cannot run at a size is skipped with the reason, decided before running it:
from its estimated peak memory against the memory limit, or from its time predicted from the
previous size (time ~ N ** e, e = 3 for the dense walk, 1 otherwise) against the time budget.
A call that fails anyway (out of memory, past its timeout) is reported as failed; the report
goes on. An op missing from this build is reported as unavailable.

Peak memory first, from one call after a warm-up call (left out for calls predicted to take
over a tenth of the budget): the peak extra bytes beyond the prepared inputs (CPU: growth of
the peak RSS in a forked child; CUDA: torch.cuda.max_memory_allocated), see affext.measure.
Then time: the median, min and max over `repeats` calls after `warmup` calls, stopping early
once half of `budget_s` is spent; where (warmup + 1) calls would not fit in the budget, the
memory measurement's single call is the time (repeats = 1).
`--quick` uses smaller shapes, shorter walks, fewer repeats and a 1 s budget (well under 2
minutes on 2 cores); its figures show that the harness works, not how fast affext is.

JSON report (schema "affext-bench", schema_version 1; stable: fields are only ever added, a
change of meaning raises the version). Numbers are finite; times in seconds, memory in bytes.
    schema, schema_version      "affext-bench", 1
    created                     ISO 8601 time (UTC) the run started
    mode                        "full" | "quick"
    note                        what the mode means for the figures
    device                      "cpu" | "cuda"
    settings                    {repeats, warmup, budget_s, memory_limit_bytes, timeout_s,
                                 threads (--threads, or null: torch's default),
                                 memory_ratio_floor_bytes}
    environment                 {affext, build (affext.build_info()), python, platform, cpu,
                                 cpu_count, threads, interop_threads, torch, cuda (torch's
                                 CUDA version or null), gpu (name or null), dtype,
                                 float32_matmul_precision, load_average [1, 5, 15 min],
                                 memory_total_bytes}
    benchmarks                  list of entries, in run order:
      id                        e.g. "random_walk/56-psa", "random_walk/scaling-224"
      op                        "affinity" | "pair_loss" | "random_walk"
      group                     "shapes" (a real run's shapes) | "scaling" (the sweep)
      title                     what is measured, in words
      params                    the case parameters (batch, channels, size, radius, live,
                                beta, iterations ...), the same for every implementation
      n                         map area H * W
      results                   {implementation: result}; implementations "affext",
                                "psa-dense", "torch-sparse" (those that exist for the op)
        case                    the affext.measure case name
        status                  "ok" | "skipped" | "failed" | "unavailable"
        reason                  why not ok (absent when ok)
        time                    {median_s, min_s, max_s, repeats} (ok only; repeats 1: one
                                call was too long to repeat within budget_s)
        peak_extra_bytes        measured (ok only)
        memory_after_warm_up    true: the measured call followed a warm-up call (its one-time
                                costs left out); false for calls predicted to take over a
                                tenth of budget_s (ok only)
        estimated_peak_bytes    the case's estimate, or null
      ratios                    {reference: {time, memory}} for each reference that ran, when
                                affext ran: reference median / affext median, and reference
                                peak / affext peak (each at least memory_ratio_floor_bytes,
                                the page size a peak-RSS measurement resolves); > 1: affext
                                is faster / smaller
The PNG (--plot) draws the sweep's time and peak memory against N on log-log axes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import __version__, measure
from ._extension import build_info

SCHEMA = "affext-bench"
SCHEMA_VERSION = 1
AFFEXT = "affext"
REFERENCES = ("psa-dense", "torch-sparse")
STATUSES = ("ok", "skipped", "failed", "unavailable")
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
        return int(self.params["size"]) ** 2


@dataclass
class Settings:
    repeats: int = 5
    warmup: int = 1
    budget_s: float = 60.0
    memory_limit_bytes: int = 0
    timeout_s: float = 300.0
    threads: int | None = None  # torch's intra-op threads; None: torch's default


# Shapes of a real run: a 448 crop is a 56x56 map at stride 8 (method.md sections 3-5).
TRAIN = dict(batch=8, size=56, radius=5)
WALK = dict(channels=21, beta=8, iterations=256, radius=5)
SCALING_SIZES = (28, 56, 84, 112, 160, 224, 320, 448, 512)
# --quick: small enough for the test suite; the same code paths.
QUICK_TRAIN = dict(batch=1, size=28, radius=5)
QUICK_WALK = dict(channels=21, beta=8, iterations=32, radius=5)
QUICK_SCALING_SIZES = (12, 16, 24)
QUICK_NOTE = (
    "quick: smaller shapes (batch 1, 28x28 maps, C=64 features; walks of t=32 on "
    "maps up to 24x24), 3 repeats, 1 s budget; checks the harness, not affext's "
    "speed"
)
FULL_NOTE = "full: the shapes of a real run (448 crop, batch 8) and the walk up to 512x512"


def plan(quick: bool = False) -> list[Point]:
    """The benchmark entries of a run, in order."""
    train = QUICK_TRAIN if quick else TRAIN
    walk = QUICK_WALK if quick else WALK
    sizes = QUICK_SCALING_SIZES if quick else SCALING_SIZES
    channels = 64 if quick else 448
    walk_size = 16 if quick else 56
    aff = {AFFEXT: "affinity/affext", "psa-dense": "affinity/psa-dense"}
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


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def fmt_seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


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
        affext_case = point.impls[AFFEXT]
        results = {}
        for impl, case_name in point.impls.items():
            if affext_case not in measure.CASES:
                # Without affext there is no ratio to make: do not spend time on references.
                results[impl] = {
                    "case": case_name,
                    "status": "unavailable",
                    "reason": f"not in this build: no {point.op} op",
                }
            elif case_name not in measure.CASES:
                results[impl] = {
                    "case": case_name,
                    "status": "unavailable",
                    "reason": f"not in this build: no case {case_name}",
                }
            else:
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
        exponent = measure.CASE_INFO[case_name].time_exponent
        side = math.isqrt(n0)
        return (
            t0 * (point.n / n0) ** exponent,
            f"{fmt_seconds(t0)} at {side}x{side}, time ~ N^{exponent:g}",
        )

    def skip(self, impl: str, case_name: str, point: Point) -> str | None:
        """Why not to run this implementation at this point (see skip_reason), or None."""
        predicted, basis = self._predict(case_name, point)
        return skip_reason(
            impl,
            measure.estimate_peak_bytes(case_name, **point.params),
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
        estimate = measure.estimate_peak_bytes(case_name, **point.params)
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
    measure._register_builtin_cases()
    settings = settings or default_settings(device, quick)
    points = plan(quick) if points is None else points
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    report = {
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


# ---------------------------------------------------------------------------- the outputs


def format_report(report: dict) -> str:
    """The report as Markdown tables: the real-run shapes, then the walk's sweep."""
    env = report["environment"]
    lines = [
        f"affext bench, {report['mode']} ({report['note']})",
        f"device {report['device']}{' (' + env['gpu'] + ')' if env['gpu'] else ''}; "
        f"{env['cpu']}, {_threads(env['threads'])}; torch {env['torch']}, CUDA "
        f"{env['cuda'] or '-'}; {env['dtype']}; load {env['load_average']}",
        "",
        "| work | implementation | time: median (min-max, calls) | peak extra memory "
        "| affext is faster / smaller by |",
        "| --- | --- | --- | --- | --- |",
    ]
    for entry in report["benchmarks"]:
        if entry["group"] != "shapes":
            continue
        first = True
        for impl, res in entry["results"].items():
            ratio = entry["ratios"].get(impl)
            lines.append(
                "| "
                + " | ".join(
                    [
                        entry["title"] if first else "",
                        impl,
                        _time_cell(res),
                        fmt_bytes(res.get("peak_extra_bytes")) if res["status"] == "ok" else "-",
                        f"{ratio['time']:.3g}x, {ratio['memory']:.3g}x" if ratio else "",
                    ]
                )
                + " |"
            )
            first = False
    sweep = [e for e in report["benchmarks"] if e["group"] == "scaling"]
    if sweep:
        impls = list(sweep[0]["results"])
        walk = sweep[0]["params"]
        lines += [
            "",
            f"random walk scaling, C={walk['channels']}, t={walk['iterations']}, "
            "psa-shaped CAMs: time (median), peak extra memory",
            "| map (N) | " + " | ".join(impls) + " |",
            "| --- |" + " --- |" * len(impls),
        ]
        for entry in sweep:
            size = entry["params"]["size"]
            cells = []
            for impl in impls:
                res = entry["results"][impl]
                cells.append(
                    f"{fmt_seconds(res['time']['median_s'])}, {fmt_bytes(res['peak_extra_bytes'])}"
                    if res["status"] == "ok"
                    else res["reason"]
                )
            lines.append(f"| {size}x{size} ({entry['n']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _threads(n: int) -> str:
    return f"{n} thread{'' if n == 1 else 's'}"


def _time_cell(res: dict) -> str:
    if res["status"] != "ok":
        return res["reason"]
    t = res["time"]
    spread = (
        f"{fmt_seconds(t['min_s'])}-{fmt_seconds(t['max_s'])}, {t['repeats']}"
        if t["repeats"] > 1
        else "1 call"
    )
    return f"{fmt_seconds(t['median_s'])} ({spread})"


def plot_report(report: dict, path: str) -> None:
    """The walk's sweep: time and peak extra memory against N, log-log, one line an
    implementation; the sizes where one was skipped are named in its legend entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [e for e in report["benchmarks"] if e["group"] == "scaling"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    env = report["environment"]
    where = env["gpu"] or f"{env['cpu']}, {_threads(env['threads'])}"
    walk = (
        f"C={sweep[0]['params']['channels']}, t={sweep[0]['params']['iterations']}, "
        if sweep
        else ""
    )
    fig.suptitle(
        f"affext bench ({report['mode']}): random walk, {walk}psa-shaped CAMs, "
        f"{report['device']} ({where})",
        fontsize=9,
    )
    impls = list(sweep[0]["results"]) if sweep else []
    for impl, marker in zip(impls, "os^v"):
        ok = [e for e in sweep if e["results"][impl]["status"] == "ok"]
        missed = [e["params"]["size"] for e in sweep if e["results"][impl]["status"] != "ok"]
        label = impl + (f" (not run: {', '.join(f'{s}x{s}' for s in missed)})" if missed else "")
        n = [e["n"] for e in ok]
        axes[0].plot(
            n, [e["results"][impl]["time"]["median_s"] for e in ok], marker=marker, label=label
        )
        axes[1].plot(
            n,
            [max(e["results"][impl]["peak_extra_bytes"], 1) / 1e6 for e in ok],
            marker=marker,
            label=label,
        )
    measured = any(e["results"][impl]["status"] == "ok" for e in sweep for impl in impls)
    for ax, ylabel in zip(axes, ("time a call (s, median)", "peak extra memory (MB)")):
        ax.set_xlabel("N = H * W (map pixels)")
        ax.set_ylabel(ylabel)
        if measured:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        else:
            ax.text(
                0.5,
                0.5,
                "no random walk measured (not in this build)",
                ha="center",
                transform=ax.transAxes,
            )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `affext bench` (affext.cli calls this for its subcommand)."""
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="where to run every implementation (default: cpu)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small shapes, few repeats: a check of the harness that ends in "
        "well under 2 minutes on 2 cores",
    )
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON here")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw the walk's time and memory against N here (log-log)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed calls a case (default 5, quick 3)"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="seconds one implementation may take at one size: longer "
        "predicted calls are skipped, repeats stop there (default 60, "
        "quick 1)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch's CPU threads for every implementation (default: torch's)",
    )
    parser.add_argument(
        "--memory-limit-gb",
        type=float,
        default=None,
        help="skip an implementation whose estimated peak exceeds this "
        "(default: half the free RAM, or 90%% of the free GPU memory)",
    )


def main(args: argparse.Namespace) -> int:
    """Run `affext bench` with parsed arguments; print the tables, write --json / --plot."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("affext bench: --device cuda, but torch sees no CUDA device here")
    if args.device == "cuda" and not build_info()["cuda"]:
        raise SystemExit(
            "affext bench: --device cuda, but affext was built without its "
            "CUDA kernels (rebuild with AFFEXT_CUDA=1)"
        )
    settings = default_settings(args.device, args.quick)
    if args.repeats is not None:
        settings.repeats = max(1, args.repeats)
    if args.budget_s is not None:
        settings.budget_s = args.budget_s
        settings.timeout_s = max(settings.timeout_s, 4 * args.budget_s)
    if args.threads is not None:
        settings.threads = max(1, args.threads)
    if args.memory_limit_gb is not None:
        settings.memory_limit_bytes = int(args.memory_limit_gb * 1e9)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    log(
        f"affext bench on {args.device} ({'quick' if args.quick else 'full'}): budget "
        f"{settings.budget_s:g} s an implementation a size, memory limit "
        f"{fmt_bytes(settings.memory_limit_bytes)}"
    )
    report = run_bench(args.device, args.quick, settings, log=log)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, allow_nan=False)
            f.write("\n")
    if args.plot:
        plot_report(report, args.plot)
    print(format_report(report))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="affext bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    sys.exit(main(_parser().parse_args()))
