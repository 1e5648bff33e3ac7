"""Benchmarks of `gxd_optim`, run as ``python -m gxd_optim.bench COMMAND``.

Commands:
    overhead: the wrapper's cost per step and in peak memory against the bare optimizer
        (`gxd_optim.bench.overhead`).
"""
