"""Benchmarks of `gxd_optim`, run as ``python -m gxd_optim.bench COMMAND``.

Commands:
    overhead: the wrapper's cost per step and in peak memory against the bare optimizer
        (`gxd_optim.bench.overhead`).
    list: the plasticity problems (`gxd_optim.bench.problems`) and the reset criteria.
    run: train the bare optimizer and each criterion on a problem; curves, reset costs, a
        table (`gxd_optim.bench.runner`, `gxd_optim.bench.report`).
    sweep: each criterion at several replacement rates, and where it starts to degrade.
"""
