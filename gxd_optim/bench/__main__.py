"""Command line of the benchmarks: ``python -m gxd_optim.bench COMMAND [options]``.

Each command is one subparser, added by a ``_add_<command>`` function listed in `COMMANDS`;
it stores its handler as ``args.handler``, which `main` calls.

Example:
    ``python -m gxd_optim.bench overhead --cases a,mlp-b1-sgd --repeats 50``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from . import overhead


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _cases(text: str) -> tuple[str, ...]:
    try:
        return overhead.select_cases(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# -- overhead ----------------------------------------------------------------------------------
def _add_overhead(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cases = "; ".join(f"{c.key}={c.name}" for c in overhead.CASES)
    parser = commands.add_parser(
        "overhead",
        help="step-time ratio and peak-memory increase of GXDReset over the bare optimizer",
        description=(
            "Time the bare and the wrapped training step, interleaved, and measure their peak "
            "memory, for the cases of issue 6; print a Markdown table and write "
            "OUT/overhead.json."
        ),
    )
    parser.add_argument(
        "--cases",
        type=_cases,
        default=None,
        help=f"comma-separated case names or letters, or 'all' (default). Cases: {cases}",
    )
    parser.add_argument(
        "--repeats",
        type=_count(1),
        default=None,
        help=(
            f"timed pairs per case, x{max(c.repeat_scale for c in overhead.CASES)} for the "
            f"batch-1 cases (default {overhead.DEFAULT_REPEATS}; --quick "
            f"{overhead.QUICK.repeats})"
        ),
    )
    parser.add_argument(
        "--warmup",
        type=_count(0),
        default=None,
        help=(
            f"untimed calls of each arm first (default {overhead.DEFAULT_WARMUP}; "
            f"--quick {overhead.QUICK.warmup})"
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="a tiny run that checks the command, not the speed"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default cpu")
    parser.add_argument(
        "--threads",
        type=_count(1),
        default=None,
        help="torch.set_num_threads for the run (default: leave torch's setting)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench_out"),
        help="directory for overhead.json (default bench_out)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_overhead, parser=parser)


def _overhead(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        args.parser.error("--device cuda: torch.cuda.is_available() is False")
    base = overhead.QUICK if args.quick else overhead.Settings()
    settings = overhead.Settings(
        cases=args.cases or base.cases,
        repeats=base.repeats if args.repeats is None else args.repeats,
        warmup=base.warmup if args.warmup is None else args.warmup,
        memory_steps=base.memory_steps,
        device=args.device,
        threads=args.threads,
        quick=args.quick,
    )
    report = overhead.run_overhead(settings, progress=not args.no_progress)
    path = overhead.write_report(report, args.out)
    print(overhead.summary_text(report))
    print(f"wrote {path}")
    return 0


COMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    _add_overhead,
)
"""Functions that each add one command's subparser."""


def build_parser() -> argparse.ArgumentParser:
    """The parser with one subcommand per entry of `COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="python -m gxd_optim.bench", description="Benchmarks of gxd_optim."
    )
    commands = parser.add_subparsers(title="commands", dest="command", required=True)
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one benchmark command.

    Args:
        argv: arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The exit status.
    """
    args = build_parser().parse_args(argv)
    status: int = args.handler(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
