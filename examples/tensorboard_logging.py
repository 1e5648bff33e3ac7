"""Send `GXDReset`'s per-layer diagnostics to TensorBoard, or to `logging` without it.

A short continual regression run (the target changes every ``--task-steps`` steps).
Every ``--log-every`` steps the figures of ``opt.layer_summaries()`` (dormant fraction,
resets, eligible units, utility quantiles per layer) and the ``opt.summary()`` table go
to a ``torch.utils.tensorboard.SummaryWriter`` when ``tensorboard`` is installed (``pip
install tensorboard``). Without it the script says so on stderr and the same table
reaches the ``logging`` module, where ``opt.summary()`` always logs it.

Usage::

    python examples/tensorboard_logging.py --logdir runs/gxd   # then: tensorboard --logdir runs
    python examples/tensorboard_logging.py --quick             # a few seconds (for the tests)

"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from gxd_optim import GXDReset


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments; ``--quick`` shortens the run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="runs/gxd_optim", help="TensorBoard log folder")
    parser.add_argument("--steps", type=int, default=3000, help="training steps")
    parser.add_argument("--task-steps", type=int, default=500, help="steps per target")
    parser.add_argument("--log-every", type=int, default=250, help="steps between logs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="300 steps, maturity 20")
    args = parser.parse_args(argv)
    if min(args.steps, args.task_steps, args.log_every) < 1:
        parser.error("--steps, --task-steps and --log-every must be positive")
    return args


# --8<-- [start:writer]
def make_writer(logdir: str) -> Any | None:
    """A TensorBoard ``SummaryWriter``, or ``None`` (with a note on stderr) without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print(
            "tensorboard is not installed (pip install tensorboard): "
            "the diagnostics go to the logging module instead",
            file=sys.stderr,
        )
        return None
    return SummaryWriter(logdir)


def log_diagnostics(opt: GXDReset, writer: Any | None, step: int) -> None:
    """Send the per-layer figures to TensorBoard; the table is logged by ``opt.summary()``."""
    table = opt.summary()  # also logged at INFO level on the "gxd_optim" logger
    if writer is None:
        return
    for s in opt.layer_summaries():
        writer.add_scalar(f"gxd/{s.name}/dormant", s.dormant, step)
        writer.add_scalar(f"gxd/{s.name}/resets", s.resets, step)
        writer.add_scalar(f"gxd/{s.name}/eligible", s.eligible, step)
        writer.add_scalar(f"gxd/{s.name}/utility_median", s.utility_quantiles[2], step)
    writer.add_text("gxd/summary", f"<pre>{table}</pre>", step)


# --8<-- [end:writer]


def main(argv: Sequence[str] | None = None) -> GXDReset:
    """Train, logging the diagnostics every ``--log-every`` steps; return the wrapper."""
    args = parse_args(argv)
    maturity = 20 if args.quick else 100
    steps = 300 if args.quick else args.steps
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    generator = torch.Generator().manual_seed(args.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = nn.Sequential(
            nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
        )
        teacher = nn.Linear(8, 1)
    # --8<-- [start:loop]
    opt = GXDReset(torch.optim.Adam(model.parameters(), lr=1e-3), model, maturity=maturity)
    writer = make_writer(args.logdir)
    for step in range(1, steps + 1):
        if step % args.task_steps == 0:
            with torch.no_grad():  # a new target
                teacher.weight.copy_(torch.randn(teacher.weight.shape, generator=generator))
        x = torch.randn(32, 8, generator=generator)
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), teacher(x).detach())
        loss.backward()
        opt.step()
        if step % args.log_every == 0:
            if writer is not None:
                writer.add_scalar("train/loss", loss.item(), step)
            log_diagnostics(opt, writer, step)
    if writer is not None:
        writer.close()
    # --8<-- [end:loop]
    return opt


if __name__ == "__main__":
    main()
