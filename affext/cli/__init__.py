"""The `affext` command: thin argparse over the stage functions (affext.stages.*).

Its parts: the stage commands, one a stage of affext.stages.registry (affext.cli.stages), the
data, run, info and bench commands (affext.cli.commands), the options they share
(affext.cli.options); the refusal to train an ImageNet backbone from scratch is the
training stages' own (affext.stages.training.require_weights). `affext psa` and `affext irn`
come from affext.psa.cli and affext.irn.cli. Errors are reported by affext.errors.run_command.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from ..errors import run_command, user_message
from ..extras import MissingExtraError
from .commands import _add_data_commands, _add_run_command, _add_tool_commands
from .options import _stage_config as _stage_config
from .options import _training_fields as _training_fields
from .stages import add_stage_commands


def _parser(with_bench: bool) -> tuple[argparse.ArgumentParser, dict, MissingExtraError | None]:
    """The argument parser, its commands' parsers by name, and the error that kept the stage
    commands out (no pipeline extra), if any."""
    parser = argparse.ArgumentParser(
        prog="affext",
        description="AffinityNet (PSA) pseudo labels from image-level labels, "
        "with fast kernels. `affext data synth --out D` then `affext run --voc-root D ...`.",
    )
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    _add_data_commands(sub)
    missing = add_stage_commands(sub)
    if missing is not None:
        parser.epilog = f"The stage commands and run are not available: {missing}"
    else:  # run's flags come from the stages (main says which extra a missing one needs)
        _add_run_command(sub)
    _add_tool_commands(sub, with_bench)
    from ..irn.cli import add_parser as add_irn_parser
    from ..psa.cli import add_parser as add_psa_parser

    add_psa_parser(sub)
    add_irn_parser(sub)
    return parser, sub.choices, missing


def build_parser(with_bench: bool = False) -> argparse.ArgumentParser:
    """The argument parser; `with_bench` imports affext.bench for its arguments."""
    return _parser(with_bench)[0]


def _launch(argv: list[str], nproc: int, workdir: str | None) -> int:
    """`affext ... --nproc N`: the same command under torchrun, N processes on this machine
    (rank logs in WORKDIR/logs when there is a work directory); its exit status."""
    import subprocess

    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launcher += [f"--nproc_per_node={nproc}"]
    if workdir:
        launcher += [f"--log-dir={Path(workdir) / 'logs'}", "--tee=3"]
    return subprocess.call([*launcher, "-m", "affext", *rest])


def main(argv: list[str] | None = None) -> int:
    from .. import dist

    argv = sys.argv[1:] if argv is None else list(argv)
    parser, commands, missing = _parser(with_bench=bool(argv) and argv[0] == "bench")
    if missing is not None and argv and not argv[0].startswith("-") and argv[0] not in commands:
        # a stage command, without the pipeline extra: say which extra to install
        print(f"affext {argv[0]}: error: {user_message(missing)}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if getattr(args, "nproc", None) and not dist.launched():
        workdir = getattr(args, "workdir", None)
        if workdir is None and getattr(args, "config", None):
            from ..stages.config import read_config_file

            with contextlib.suppress(ValueError, OSError):  # the ranks report it
                workdir = read_config_file(args.config).get("workdir")
        return _launch(argv, args.nproc, workdir)
    if dist.launched():  # under torchrun: one process group; bars and prints on rank 0
        dist.setup()
        if not dist.is_main() and hasattr(args, "quiet"):
            args.quiet = True
    try:
        return run_command(f"affext {args.command}", args.func, args)
    finally:
        dist.cleanup()


__all__ = ["build_parser", "main", "user_message"]
