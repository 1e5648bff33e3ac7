"""The command line of the benchmarks: ``python -m gxd_optim.bench COMMAND [options]``.

Each command is one subparser, added by a ``_add_<command>`` function listed in `COMMANDS`;
it stores its handler as ``args.handler``, which `main` calls.

Examples:
    ``python -m gxd_optim.bench overhead --cases a,mlp-b1-sgd --repeats 50``

    ``python -m gxd_optim.bench run bitflip --utilities gxd,contribution --seeds 3 --out out``

    ``python -m gxd_optim.bench sweep memorisation --rates 1e-4,1e-3,1e-2 --quick``
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import REFERENCES
from . import overhead, plots
from .problems import PROBLEMS
from .report import compact, summary_text, write_json
from .runner import ARMS, NONE, Options, Plan, run_benchmark, run_sweep

Report = dict[str, Any]
Plot = Callable[[Report, Path], Path]


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


def _names(known: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
        if names == ("all",):
            return tuple(known)
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {unknown or text!r}; known: {', '.join(known)} (or 'all')"
            )
        return names

    return parse


def _positive_floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return tuple(sorted(set(values)))


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


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
            "memory, for each case below; print a Markdown table and write "
            "OUT/overhead.json and OUT/overhead.png (every pair's ratio, per case and copy)."
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
            f"untimed calls of each copy of each arm first (default "
            f"{overhead.DEFAULT_WARMUP}; --quick {overhead.QUICK.warmup})"
        ),
    )
    parser.add_argument(
        "--copies",
        type=_count(1),
        default=None,
        help=(
            "copies of each arm, built from the same seed, that the timed pairs take in turn: "
            "where a model's tensors happen to live can move one copy's step time by a few "
            f"percent (default {overhead.DEFAULT_COPIES}; --quick {overhead.QUICK.copies})"
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
        help="directory for overhead.json and overhead.png (default bench_out)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_overhead, parser=parser)


def _check_device(args: argparse.Namespace) -> None:
    if args.device == "cuda" and not torch.cuda.is_available():
        args.parser.error("--device cuda: torch.cuda.is_available() is False")


def _overhead(args: argparse.Namespace) -> int:
    _check_device(args)
    base = overhead.QUICK if args.quick else overhead.Settings()
    settings = overhead.Settings(
        cases=args.cases or base.cases,
        repeats=base.repeats if args.repeats is None else args.repeats,
        warmup=base.warmup if args.warmup is None else args.warmup,
        copies=base.copies if args.copies is None else args.copies,
        memory_steps=base.memory_steps,
        device=args.device,
        threads=args.threads,
        quick=args.quick,
    )
    return _report(
        args,
        lambda: overhead.run_overhead(settings, progress=not args.no_progress),
        {"overhead.json": dict},
        {"overhead.png": plots.overhead_plot},
    )


# -- list, run, sweep --------------------------------------------------------------------------
def _add_list(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("list", help="the problems, their settings and the criteria")
    parser.set_defaults(handler=_list, parser=parser)


def _list(args: argparse.Namespace) -> int:
    print("problems (settings: full-scale defaults; change with --set KEY=VALUE):")
    for problem in PROBLEMS.values():
        data = {"none": "", "optional": " [--data-dir optional]", "required": " [--data-dir]"}
        print(f"  {problem.name:<13} {problem.summary}{data[problem.data]}")
        settings = ", ".join(f"{k}={v}" for k, v in vars(problem.settings()).items())
        print(f"  {'':<13} {problem.metric}; {settings}")
    print(f"criteria: {', '.join(ARMS)}  ('{NONE}': the bare optimizer, no reset)")
    return 0


def _training_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    description: str,
) -> argparse.ArgumentParser:
    """The subparser of ``run`` or ``sweep``, with the options they share."""
    parser = commands.add_parser(name, help=help, description=description)
    parser.add_argument("problem", choices=sorted(PROBLEMS), help="the problem (see 'list')")
    parser.add_argument(
        "--utilities",
        type=_names([c for c in ARMS if c != NONE]),
        default=tuple(c for c in ARMS if c != NONE),
        help="comma-separated criteria, or 'all' (default); 'none' always runs too",
    )
    parser.add_argument("--seeds", type=_count(1), default=1, help="seeds 0..N-1 (default 1)")
    parser.add_argument("--quick", action="store_true", help="a tiny scale that checks the command")
    parser.add_argument(
        "--set",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a problem setting (repeatable; tuples as 128-128); see 'list'",
    )
    parser.add_argument("--selection", choices=("budget", "threshold"), default=None)
    parser.add_argument("--threshold", type=float, default=None, help="τ of threshold selection")
    parser.add_argument("--interval", type=_count(1), default=None, help="F of threshold selection")
    parser.add_argument("--maturity", type=_count(0), default=None, help="GXDReset maturity")
    parser.add_argument(
        "--reference", choices=REFERENCES, default=None, help="GXDReset reference (default mean)"
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="local MNIST / CIFAR-10 files")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default cpu")
    parser.add_argument(
        "--threads", type=_count(1), default=1, help="torch.set_num_threads (default 1)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench_out"), help="output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = _training_parser(
        commands,
        "run",
        help="train each criterion on a problem: curves, reset costs, table",
        description=(
            "Train the bare optimizer ('none') and GXDReset with each criterion on a problem; "
            "write OUT/run.json, OUT/curves.png and OUT/costs.png and print a Markdown table."
        ),
    )
    parser.add_argument(
        "--replacement-rate", type=float, default=None, help="GXDReset replacement_rate"
    )
    parser.set_defaults(handler=_run, parser=parser)


def _add_sweep(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = _training_parser(
        commands,
        "sweep",
        help="run each criterion at several replacement rates: where does it degrade?",
        description=(
            "Train each criterion at every replacement rate (budget selection); write "
            "OUT/sweep.json and OUT/sweep.png and print a table with each criterion's "
            "degradation onset."
        ),
    )
    parser.add_argument(
        "--rates",
        type=_positive_floats,
        default=(1e-5, 1e-4, 1e-3),
        help="comma-separated replacement rates (default 1e-5,1e-4,1e-3)",
    )
    parser.set_defaults(handler=_sweep, parser=parser)


def _plan(args: argparse.Namespace) -> Plan:
    """What ``run`` or ``sweep`` trains, from the arguments (or a usage error)."""
    _check_device(args)
    problem = PROBLEMS[args.problem]
    if problem.data == "required" and args.data_dir is None:
        args.parser.error(f"problem {problem.name!r} reads local files: pass --data-dir")
    if args.data_dir is not None and not args.data_dir.is_dir():
        args.parser.error(f"--data-dir {args.data_dir}: not a directory")
    try:
        settings = problem.settings(args.quick, dict(args.set))
    except ValueError as error:
        args.parser.error(f"--set: {error}")
    given = {
        "replacement_rate": getattr(args, "replacement_rate", None),
        "selection": args.selection,
        "threshold": args.threshold,
        "interval": args.interval,
        "maturity": args.maturity,
        "reference": args.reference,
    }
    return Plan(
        problem,
        settings,
        args.utilities,
        args.seeds,
        {k: v for k, v in given.items() if v is not None},
        Options(args.device, args.data_dir, args.threads, not args.no_progress),
        args.quick,
    )


def _report(
    args: argparse.Namespace,
    compute: Callable[[], Report],
    data: Mapping[str, Callable[[Report], Mapping[str, Any]]],
    figures: Mapping[str, Plot],
) -> int:
    """Compute a report, write it into ``args.out``, print its summary, draw its plots.

    Args:
        compute: runs the benchmark; a ``ValueError`` or ``FileNotFoundError`` (bad settings,
            missing or malformed data files) becomes a usage error.
        data: ``{file name: what of the report it holds}``, written as JSON.
        figures: ``{file name: plot function}``, drawn after the summary is printed (the
            figures are out whatever happens to a plot).
    """
    try:
        result = compute()
    except (ValueError, FileNotFoundError) as error:
        args.parser.error(str(error))
    written = [write_json(make(result), args.out, name) for name, make in data.items()]
    print(summary_text(result))
    written += [plot(result, args.out / name) for name, plot in figures.items()]
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _run(args: argparse.Namespace) -> int:
    plan = _plan(args)
    return _report(
        args,
        lambda: run_benchmark(plan),
        {"run.json": dict, "summary.json": compact},
        {"curves.png": plots.curve_plot, "costs.png": plots.cost_plot},
    )


def _sweep(args: argparse.Namespace) -> int:
    plan = _plan(args)
    if plan.reset.get("selection", "budget") != "budget":
        args.parser.error("a sweep varies replacement_rate: use --selection budget")
    return _report(
        args,
        lambda: run_sweep(plan, args.rates),
        {"sweep.json": dict, "summary.json": compact},
        {"sweep.png": plots.sweep_plot},
    )


COMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    _add_overhead,
    _add_list,
    _add_run,
    _add_sweep,
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
