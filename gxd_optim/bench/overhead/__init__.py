"""What `GXDReset` costs: step time and peak memory against the bare optimizer.

Every case (`cases`) compares two *arms* (`arms`) on the same workload: a model and a pool of
batches built from fixed seeds (nothing is downloaded), an optimizer and a loss. Usually the
baseline arm is the bare optimizer and the candidate is the same optimizer wrapped in
`GXDReset` with its default settings, except ``maturity`` set so high that no unit becomes
eligible: the timed steps pay for the hooks, the statistics and the budget bookkeeping, never
for a reset. Two cases measure the rest: the cost of a step on which resets happen (against the
wrapped step without resets) and the cost of `GXDReset.predicted_cost` for all layers (against
a bare step).

The pipeline: `cases` → `arms` → `timing` (interleaved pairs, `TIMING_METHOD`) and `memory`
(peaks, `MEMORY_METHOD`) → `measure` (one record per case, the report) → `report` (the table).

Examples:
    >>> from gxd_optim.bench.overhead import CASES
    >>> [(case.key, case.compares) for case in CASES[5:8]]
    [('f', 'wrapped / bare'), ('g', 'resetting / wrapped'), ('h', 'predicted-cost / bare')]
"""

from .arms import ARMS, Arm, copies_report
from .cases import (
    CASES,
    DEFAULT_COPIES,
    DEFAULT_REPEATS,
    GOALS,
    QUICK,
    Case,
    Goal,
    Settings,
    Workload,
    failed_goals,
    select_cases,
)
from .measure import measure_case, run_overhead
from .memory import MEMORY_METHOD, arm_memory, memory_peaks, summarise_memory, trace_peaks
from .report import overhead_notes, overhead_table, verdict, where_and_what
from .timing import DEFAULT_WARMUP, TIMING_METHOD, median_ci, summarise_times, time_interleaved

__all__ = [
    "ARMS",
    "CASES",
    "DEFAULT_COPIES",
    "DEFAULT_REPEATS",
    "DEFAULT_WARMUP",
    "GOALS",
    "MEMORY_METHOD",
    "QUICK",
    "TIMING_METHOD",
    "Arm",
    "Case",
    "Goal",
    "Settings",
    "Workload",
    "arm_memory",
    "copies_report",
    "failed_goals",
    "measure_case",
    "median_ci",
    "memory_peaks",
    "overhead_notes",
    "overhead_table",
    "run_overhead",
    "select_cases",
    "summarise_memory",
    "summarise_times",
    "time_interleaved",
    "trace_peaks",
    "verdict",
    "where_and_what",
]
