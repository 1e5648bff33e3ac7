"""The least that collecting GXD statistics on every step costs, next to ``GXDReset``.

``LeastTracker`` does only the arithmetic of GXD's statistics, with no checks and no
bookkeeping: a hook on each consumer's input that keeps ``(h, ∂ℓ/∂h)``, then per step one
concatenation, ``|g·(h − r)|``, one sum over the samples, one EMA update of the utilities and
running means together and the bias correction of the means. Timed side by side with the
bare optimizer, hooks that only keep ``(h, ∂ℓ/∂h)``, and ``GXDReset`` at its defaults (with
resets off), it shows which part of the wrapper's cost a hook-based tracker cannot avoid.

Run from the repository root (about a minute)::

    python scripts/tracking_floor.py --width 64 --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gxd_optim import GXDReset

Step = Callable[[], None]


class LeastTracker:
    """GXD's per-step statistics of the hidden units of a plain MLP, and nothing else.

    For each hidden layer's units ``h`` (the input of the next Linear) and their gradient
    ``g = ∂ℓ/∂h``, at the ``t``-th `step` (one per backward pass):

    $$ u \\leftarrow \\eta u + (1-\\eta)\\,\\tfrac1N \\textstyle\\sum_x |g\\,(h - r)|, \\qquad
       m \\leftarrow \\eta m + (1-\\eta)\\,\\tfrac1N \\textstyle\\sum_x h, \\qquad
       r = m / (1 - \\eta^t) $$

    GXD's utilities are ``u / (1 - η^t)`` (`utilities`). There is no finiteness check, no
    sample counting and no support for more than one backward pass per step.

    Args:
        consumers: the Linear layers that read the hidden units, in order.
        width: units per hidden layer.
        batch: samples per batch.
        decay: ``η``.
    """

    def __init__(
        self, consumers: Sequence[nn.Linear], width: int, batch: int, decay: float
    ) -> None:
        self.layers = len(consumers)
        self.width, self.decay = width, decay
        units = self.layers * width
        self.held: list[tuple[Tensor, Tensor]] = []
        self.workspace = torch.empty(batch, 2 * units)
        self.steps = 0
        self.means = torch.zeros(units)  # r of every layer, in order
        self.stats = torch.zeros(2 * units)  # [m ; u]
        for module in consumers:
            module.register_forward_pre_hook(self._on_read)

    def _on_read(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        h = args[0]
        if not h.requires_grad:  # no backward pass will follow
            return args
        alias = h.view_as(h)
        alias.grad_fn.register_prehook(lambda grads: self.held.append((h.detach(), grads[0])))
        return (alias, *args[1:])

    def step(self) -> None:
        """Fold the kept ``(h, g)`` of the latest backward pass into the EMAs."""
        held = list(reversed(self.held))  # the backward pass reached the last layer first
        self.held = []
        units = self.layers * self.width
        both = torch.cat([h for h, _ in held] + [g for _, g in held], 1, out=self.workspace)
        both[:, units:].mul_(torch.sub(both[:, :units], self.means)).abs_()
        batch_means = both.sum(0).div_(both.shape[0])
        self.stats.lerp_(batch_means, 1 - self.decay)
        self.steps += 1
        torch.div(self.stats[:units], 1 - self.decay**self.steps, out=self.means)

    @property
    def utilities(self) -> Tensor:
        """GXD's utility ``u / (1 - η^t)`` of every hidden unit, layer after layer."""
        return self.stats[self.layers * self.width :] / (1 - self.decay**self.steps)


def mlp(width: int, depth: int, seed: int = 0) -> nn.Sequential:
    """``8 → width × depth → 4``, tanh (stable-baselines3's default policy network)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    size = 8
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.Tanh()]
        size = width
    return nn.Sequential(*layers, nn.Linear(size, 4))


def arms(width: int, depth: int, batch: int) -> dict[str, Step]:
    """One training step per arm, each on its own copy of the same network and batch."""
    x, y = torch.randn(batch, 8), torch.randn(batch, 4)
    built: dict[str, Step] = {}

    def training(model: nn.Module, optimizer: Any, after: Step = lambda: None) -> Step:
        def step() -> None:
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()  # type: ignore[no-untyped-call]
            after()
            optimizer.step()

        return step

    def adam(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=3e-4)

    model = mlp(width, depth)
    built["bare"] = training(model, adam(model))
    model = mlp(width, depth)
    consumers = [m for m in model if isinstance(m, nn.Linear)][1:]
    hooks_only = LeastTracker(consumers, width, batch, 0.99)
    built["hooks that keep (h, g)"] = training(model, adam(model), hooks_only.held.clear)
    model = mlp(width, depth)
    consumers = [m for m in model if isinstance(m, nn.Linear)][1:]
    built["least tracker"] = training(
        model, adam(model), LeastTracker(consumers, width, batch, 0.99).step
    )
    model = mlp(width, depth)
    built["GXDReset"] = training(model, GXDReset(adam(model), model, maturity=10**9))
    return built


def measure(steps: dict[str, Step], rounds: int, warmup: int) -> dict[str, float]:
    """Median seconds per step of each arm, the arms interleaved round by round."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Print each arm's median step time and its ratio to the bare step; return the times."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4000, help="timed steps per arm")
    parser.add_argument("--warmup", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        medians = measure(arms(args.width, args.depth, args.batch), args.rounds, args.warmup)
    finally:
        torch.set_num_threads(threads)
    bare = medians["bare"]
    print(f"MLP {args.depth}×{args.width}, batch {args.batch}, Adam, {args.threads} thread(s)")
    print("| arm | median step | / bare |\n|---|---|---|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds * 1e6:.0f} µs | {seconds / bare:.3f} |")
    return medians


if __name__ == "__main__":
    main()
