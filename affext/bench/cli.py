"""The command line of the benchmark: `affext bench` and `python -m affext.bench`."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .._extension import build_info
from .report import fmt_bytes, format_report, plot_report
from .runner import default_settings, run_bench


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
    parser = argparse.ArgumentParser(
        prog="affext bench",
        description=(
            "affext against psa-dense, torch-sparse and pydensecrf, side by side in one run"
        ),
    )
    add_arguments(parser)
    return parser


def run_cli(argv: list[str] | None = None) -> int:
    """`python -m affext.bench [options]`."""
    return main(_parser().parse_args(argv))
