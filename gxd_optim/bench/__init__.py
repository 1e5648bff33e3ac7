"""Benchmarks of `gxd_optim`, run as ``python -m gxd_optim.bench COMMAND`` (`cli`).

Commands:
    overhead: the wrapper's cost per step and in peak memory against the bare optimizer
        (`gxd_optim.bench.overhead`).
    list: the plasticity problems and the reset criteria.
    run: train the bare optimizer and each criterion on a problem; curves, reset costs, a table.
    sweep: each criterion at several replacement rates, and where it starts to degrade.

The plasticity benchmarks, in the order the data flow:

* `settings`: typed ``--set KEY=VALUE`` overrides of a problem's settings;
* `streams`, `datasets`: generated data and local data files;
* `models`: the networks (of the overhead benchmark too);
* `segments`: how data become the points of a learning curve;
* `problems`: the registered problems, each a model, an optimizer and its segments;
* `runner`: trains every criterion and seed, collects curves and reset records;
* `metrics`: dormant units, rank correlation, the per-criterion summary;
* `environment`: the machine, the source and the load a report records;
* `tables`, `report`, `plots`: what is printed, written and drawn.

Importing `gxd_optim` does not import this package; it needs the ``bench`` extra.
"""
