"""affext against psa-dense, torch-sparse and pydensecrf, side by side in one run (affext bench).

    affext bench [--device cpu|cuda] [--quick] [--json FILE] [--plot FILE.png]
    python -m affext.bench ...          (the same, without the `affext` command)

Every implementation is timed in this one process on the same inputs (the cases of
affext.bench.cases, seeded), so that the ratios hold on a shared, noisy machine
(docs/performance.md). Measured:

- affinity forward+backward at a training step's shape (448 crop: C=448, 56x56, radius 5,
  batch 8): affext vs psa-dense, and on a GPU affext in bfloat16 too ("affext-bf16");
- the balanced pair loss forward+backward from a label map, same shape: affext vs psa-dense
  (psa's mask build + train_aff's loss);
- the random walk of one image (C=21, beta 8, t=256, radius 5, from precomputed affinities)
  on a 56x56 map, with psa-shaped CAMs (background + two classes live, the others exactly
  zero) and with all 21 channels live: affext vs psa-dense and torch-sparse;
- the dense CRF (psa's settings, 10 iterations) of a 375x500 image with 3 labels (psa's la
  or ha) and with 21, and psa's la + ha pair of one image as one affext call against two
  pydensecrf calls; on CUDA also a batch of 8 images in one call (pydensecrf: 8 calls, on
  the CPU whatever the device). Where affext.dense_crf is not built, or pydensecrf not
  installed, that implementation is reported skipped with the reason;
- a scaling sweep of the walk (psa-shaped CAMs) over map sizes up to 512x512.

An implementation that cannot run at a size is skipped with the reason, decided before
running it: from what this installation has (an op not built, a library missing), from its
estimated peak memory against the memory limit, or from its time predicted from the previous
size (time ~ N ** e, e = 3 for the dense walk, 1 otherwise) against the time budget.
A call that fails anyway (out of memory, past its timeout) is reported as failed; the report
goes on.

Peak memory first, from one call after a warm-up call (left out for calls predicted to take
over a tenth of the budget): the peak extra bytes beyond the prepared inputs (CPU: growth of
the peak RSS in a forked child; CUDA: torch.cuda.max_memory_allocated), see
affext.bench.measure. Then time: the median, min and max over `repeats` calls after `warmup`
calls, stopping early once half of `budget_s` is spent; where (warmup + 1) calls would not
fit in the budget, the memory measurement's single call is the time (repeats = 1).
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
      op                        "affinity" | "pair_loss" | "random_walk" | "dense_crf"
      group                     "shapes" (a real run's shapes) | "scaling" (the sweep)
      title                     what is measured, in words
      params                    the case parameters (batch, channels, size, radius, live,
                                beta, iterations ...; the dCRF's height, width, labels,
                                kind, pair, batch), the same for every implementation
      n                         map area H * W (size ** 2, or height * width)
      results                   {implementation: result}; implementations "affext",
                                "psa-dense", "torch-sparse", "pydensecrf" (those that exist for
                                the op)
        case                    the affext.bench.cases case name
        status                  "ok" | "skipped" | "failed"
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

from .cases import (
    CASE_INFO,
    CASES,
    CaseInfo,
    build,
    case,
    estimate_peak_bytes,
    unavailable_reason,
)
from .cli import add_arguments, main
from .measure import (
    MemoryProbe,
    measure_call,
    peak_memory,
    quiet_reference_warnings,
    synchronized,
    time_work,
)
from .report import format_report, plot_report
from .runner import SCHEMA, SCHEMA_VERSION, STATUSES, Point, Runner, Settings, plan, run_bench

__all__ = [
    "CASES",
    "CASE_INFO",
    "CaseInfo",
    "MemoryProbe",
    "Point",
    "Runner",
    "SCHEMA",
    "SCHEMA_VERSION",
    "STATUSES",
    "Settings",
    "add_arguments",
    "build",
    "case",
    "estimate_peak_bytes",
    "format_report",
    "main",
    "measure_call",
    "peak_memory",
    "plan",
    "plot_report",
    "quiet_reference_warnings",
    "run_bench",
    "synchronized",
    "time_work",
    "unavailable_reason",
]
