"""The command line of the benchmarks: ``python -m gxd_optim.bench COMMAND [options]``.

Each command is one subparser, added by a ``_add_<command>`` function listed in `COMMANDS`;
it stores its handler as ``args.handler``, which `main` calls.

Examples:
    ``python -m gxd_optim.bench overhead --cases a,mlp-b1-sgd --repeats 50``

    ``python -m gxd_optim.bench run bitflip --utilities gxd,contribution --seeds 3 --out out``

    ``python -m gxd_optim.bench sweep memorisation --rates 1e-4,1e-3,1e-2 --quick``

    ``python -m gxd_optim.bench cost memorisation --set activation=tanh --seeds 5``
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import REFERENCES
from . import overhead, plots
from .arguments import count, fractions, names, positive_floats, setting
from .cost import BUDGETS, CostPlan, run_cost
from .problems import PROBLEMS
from .report import compact, summary_text, write_json
from .runner import ARMS, NONE, Options, Plan, run_benchmark, run_sweep
from .variants import NAMES

Report = dict[str, Any]
Plot = Callable[[Report, Path], Path]


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
        type=count(1),
        default=None,
        help=(
            f"timed pairs per case, x{max(c.repeat_scale for c in overhead.CASES)} for the "
            f"batch-1 cases (default {overhead.DEFAULT_REPEATS}; --quick "
            f"{overhead.QUICK.repeats})"
        ),
    )
    parser.add_argument(
        "--warmup",
        type=count(0),
        default=None,
        help=(
            f"untimed calls of each copy of each arm first (default "
            f"{overhead.DEFAULT_WARMUP}; --quick {overhead.QUICK.warmup})"
        ),
    )
    parser.add_argument(
        "--copies",
        type=count(1),
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
        type=count(1),
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
    _add_problem(parser, seeds=1, criteria="'none' always runs too")
    parser.add_argument("--selection", choices=("budget", "threshold"), default=None)
    parser.add_argument("--threshold", type=float, default=None, help="τ of threshold selection")
    parser.add_argument("--interval", type=count(1), default=None, help="F of threshold selection")
    parser.add_argument("--maturity", type=count(0), default=None, help="GXDReset maturity")
    parser.add_argument(
        "--reference", choices=REFERENCES, default=None, help="GXDReset reference (default mean)"
    )
    parser.add_argument(
        "--track-every",
        type=count(1),
        default=None,
        help="GXDReset track_every: statistics on one step in this many (default 1)",
    )
    _add_common(parser)
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
        type=positive_floats,
        default=(1e-5, 1e-4, 1e-3),
        help="comma-separated replacement rates (default 1e-5,1e-4,1e-3)",
    )
    parser.set_defaults(handler=_sweep, parser=parser)


def _add_cost(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "cost",
        help="the loss each criterion's choice of units costs, on the same network states",
        description=(
            "Train the bare optimizer on a problem; at evenly spaced states let every "
            "criterion score the same batches and reset the same number of units per layer; "
            "measure the held-out loss change of each choice. Write OUT/cost.json and "
            "OUT/cost.png and print a Markdown table (mean and 95% interval over states and "
            "seeds, and the difference from GXD's on the same states)."
        ),
    )
    _add_problem(parser, seeds=5, criteria="each chooses on the same states", variants=True)
    parser.add_argument("--states", type=count(1), default=6, help="states per seed (default 6)")
    parser.add_argument(
        "--scoring", type=count(1), default=20, help="batches scored per state (default 20)"
    )
    parser.add_argument(
        "--budgets",
        type=fractions,
        default=BUDGETS,
        help="fractions of each layer's units (default "
        + ",".join(f"{b:g}" for b in BUDGETS)
        + ")",
    )
    _add_common(parser)
    parser.set_defaults(handler=_cost, parser=parser)


def _add_problem(
    parser: argparse.ArgumentParser, seeds: int, criteria: str, variants: bool = False
) -> None:
    """The problem, the criteria (``variants``: also the variants of GXD, by name) and the
    seeds of a training command."""
    built_in = [c for c in ARMS if c != NONE]
    also = f"; or the variants of GXD {', '.join(NAMES)}" if variants else ""
    parser.add_argument("problem", choices=sorted(PROBLEMS), help="the problem (see 'list')")
    parser.add_argument(
        "--utilities",
        type=names(built_in, extra=list(NAMES) if variants else []),
        default=tuple(built_in),
        help=f"comma-separated criteria, or 'all' (default: the library's){also}; {criteria}",
    )
    parser.add_argument(
        "--seeds", type=count(1), default=seeds, help=f"seeds 0..N-1 (default {seeds})"
    )


def _add_common(parser: argparse.ArgumentParser) -> None:
    """The options every training command shares: scale, settings, device, output."""
    parser.add_argument("--quick", action="store_true", help="a tiny scale that checks the command")
    parser.add_argument(
        "--set",
        type=setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a problem setting (repeatable; tuples as 128-128); see 'list'",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="local MNIST / CIFAR-10 files")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default cpu")
    parser.add_argument(
        "--threads", type=count(1), default=1, help="torch.set_num_threads (default 1)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench_out"), help="output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _settings(args: argparse.Namespace) -> Any:
    """The problem's settings from the arguments (or a usage error)."""
    _check_device(args)
    problem = PROBLEMS[args.problem]
    if problem.data == "required" and args.data_dir is None:
        args.parser.error(f"problem {problem.name!r} reads local files: pass --data-dir")
    if args.data_dir is not None and not args.data_dir.is_dir():
        args.parser.error(f"--data-dir {args.data_dir}: not a directory")
    try:
        return problem.settings(args.quick, dict(args.set))
    except ValueError as error:
        args.parser.error(f"--set: {error}")


def _cost(args: argparse.Namespace) -> int:
    plan = CostPlan(
        PROBLEMS[args.problem],
        _settings(args),
        args.utilities,
        args.seeds,
        args.states,
        args.scoring,
        args.budgets,
        Options(args.device, args.data_dir, args.threads, not args.no_progress),
        args.quick,
    )
    return _report(
        args, lambda: run_cost(plan), {"cost.json": dict}, {"cost.png": plots.comparison_plot}
    )


def _plan(args: argparse.Namespace) -> Plan:
    """What ``run`` or ``sweep`` trains, from the arguments (or a usage error)."""
    problem = PROBLEMS[args.problem]
    settings = _settings(args)
    given = {
        "replacement_rate": getattr(args, "replacement_rate", None),
        "selection": args.selection,
        "threshold": args.threshold,
        "interval": args.interval,
        "maturity": args.maturity,
        "reference": args.reference,
        "track_every": args.track_every,
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
    _add_cost,
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
