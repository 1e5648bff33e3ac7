"""Loss of plasticity in about a minute: plain Adam vs ``GXDReset`` on random-label memorisation.

What it shows
-------------
One fixed set of random inputs, and a sequence of *tasks*: each task draws new random labels
for the same inputs, and the network trains on them for a fixed number of Adam steps before the
next task begins. Memorising random labels needs every bit of the network's capacity, so the
accuracy reached at the end of each task measures how well the network can still learn: its
*plasticity*.

The same ReLU MLP (same initial weights, same data, same minibatch order) is trained twice:

* with plain ``torch.optim.Adam``: after a handful of tasks its hidden units start to die
  (a ReLU that is negative on every input never receives a gradient again), the accuracy it
  reaches falls task after task, and it ends at chance level: the network has lost the
  ability to learn (Dohare et al. 2024, "Loss of plasticity in deep continual learning");
* with ``GXDReset(torch.optim.Adam(...), model)``: after every step the wrapper re-initialises
  the few hidden units whose replacement costs the least (by the GXD estimate of the loss
  change) and the accuracy stays high on every task.

The script prints a per-task table (accuracy of both runs, units reset and dead units),
writes ``<out>/plasticity.png`` (both accuracy curves and the fraction of dead units over tasks)
and ``<out>/results.json`` (every number of the table plus the configuration).

Usage::

    python examples/continual_demo.py --out demo_out          # full demo, ~70 s on 2 cores
    python examples/continual_demo.py --quick --out /tmp/demo  # a few seconds (for the tests)
    python examples/continual_demo.py --state-policy zero      # pass-through to GXDReset

``GXDReset`` runs with its library defaults (``replacement_rate=3e-4``: about one unit per
layer every 27 steps here). ``--replacement-rate 1e-4`` (continual backprop's rate) shows a
decline that resets slow down but do not stop (with ``--tasks 60``, mean accuracy over the
last 10 tasks about 0.90, with a fifth of the units dead). 45 tasks keep the demo under a
minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gxd_optim import STATE_POLICIES, GXDReset
from gxd_optim.bench.metrics import accuracy, dormant_fraction
from gxd_optim.bench.models import mlp
from gxd_optim.bench.problems import MemorisationSettings
from gxd_optim.bench.streams import minibatches, random_label_data

LIBRARY_STATE_POLICY: str = inspect.signature(GXDReset).parameters["state_policy"].default
"""The library's default ``state_policy`` (used when ``--state-policy`` is not given)."""

PROBLEM = MemorisationSettings()
"""The benchmark's random-label memorisation problem: the demo runs it with fewer tasks."""

LIBRARY_REPLACEMENT_RATE: float = inspect.signature(GXDReset).parameters["replacement_rate"].default
"""The library's default ``replacement_rate``, which the demo uses unless told otherwise."""


@dataclass(frozen=True)
class DemoConfig:
    """Everything that defines one demo run.

    Attributes:
        tasks: number of tasks (label sets) in the sequence.
        samples: number of fixed random inputs.
        input_dim: dimension of each input.
        classes: number of classes of the random labels.
        width: hidden units per layer.
        depth: number of hidden ``Linear + ReLU`` layers.
        epochs: passes over the data per task.
        batch_size: minibatch size.
        lr: Adam learning rate.
        betas: Adam betas.
        replacement_rate: ``GXDReset`` replacement rate (fraction of mature units per step).
        maturity: ``GXDReset`` maturity (steps before a unit may be reset).
        state_policy: ``GXDReset`` state policy; ``None`` keeps the library default.
        seed: seed of the inputs, labels, initial weights, minibatch order and resets.
    """

    tasks: int = 45
    samples: int = PROBLEM.samples
    input_dim: int = PROBLEM.input_dim
    classes: int = PROBLEM.classes
    width: int = PROBLEM.width
    depth: int = PROBLEM.depth
    epochs: int = PROBLEM.epochs
    batch_size: int = PROBLEM.batch
    lr: float = PROBLEM.lr
    betas: tuple[float, float] = (0.9, 0.999)
    replacement_rate: float = LIBRARY_REPLACEMENT_RATE
    maturity: int = 100
    state_policy: str | None = None
    seed: int = 0

    @property
    def steps_per_task(self) -> int:
        """Optimizer steps per task."""
        return self.epochs * -(-self.samples // self.batch_size)


QUICK = {
    "tasks": 4,
    "samples": 128,
    "input_dim": 8,
    "width": 16,
    "epochs": 10,
    "batch_size": 32,
    "lr": 1e-2,
    "replacement_rate": 1e-2,
    "maturity": 10,
}
"""Overrides of ``--quick``: a tiny run (a few seconds) that still resets units."""


def make_mlp(config: DemoConfig) -> nn.Sequential:
    """Build the ReLU MLP ``input → (Linear, ReLU) × depth → Linear → logits``.

    The weights are drawn from PyTorch's default initialisation under ``config.seed`` without
    touching the caller's global random state, so every run starts from the same network
    (`gxd_optim.bench.models.mlp`, shared with the benchmark's memorisation problem).

    Args:
        config: the demo configuration.

    Returns:
        The model.
    """
    sizes = (config.input_dim, *[config.width] * config.depth, config.classes)
    return mlp(sizes, seed=config.seed)


def make_data(config: DemoConfig) -> tuple[Tensor, Tensor]:
    """Draw the fixed inputs and every task's random labels.

    Args:
        config: the demo configuration.

    Returns:
        ``inputs`` of shape ``[samples, input_dim]`` and ``labels`` of shape
        ``[tasks, samples]`` (task ``t`` uses ``labels[t]``).
    """
    return random_label_data(
        config.samples, config.input_dim, config.classes, config.tasks, config.seed
    )


@torch.no_grad()
def evaluate(model: nn.Sequential, inputs: Tensor, labels: Tensor) -> tuple[float, float]:
    """Training accuracy and fraction of dead hidden units on the whole data set.

    A hidden unit is *dead* when its ReLU output is zero on every input: it no longer
    receives any gradient and plain Adam never brings it back.

    Args:
        model: the MLP of :func:`make_mlp`.
        inputs: ``[samples, input_dim]``.
        labels: ``[samples]``.

    Returns:
        ``(accuracy, dead_fraction)``.
    """
    was_training = model.training
    model.eval()
    correct = float(accuracy(model(inputs), labels))
    model.train(was_training)
    return correct, dormant_fraction(model, inputs)


def train_sequence(config: DemoConfig, method: str, log: bool = True) -> dict[str, Any]:
    """Train one model on every task in turn with plain Adam or with ``GXDReset``.

    Args:
        config: the demo configuration.
        method: ``"adam"`` or ``"gxd_reset"``.
        log: print a short progress line every few tasks.

    Returns:
        Per-task lists ``accuracy``, ``dead_fraction``, ``final_loss`` and ``resets`` (units
        reset during the task; all zero for Adam), plus ``seconds`` and, for ``GXDReset``, the
        resolved wrapper settings under ``gxd``.
    """
    if method not in ("adam", "gxd_reset"):
        raise ValueError(f"unknown method {method!r}")
    inputs, labels = make_data(config)
    model = make_mlp(config)
    adam = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
    optimizer: torch.optim.Optimizer = adam
    wrapper: GXDReset | None = None
    if method == "gxd_reset":
        options: dict[str, Any] = {
            "replacement_rate": config.replacement_rate,
            "maturity": config.maturity,
            "seed": config.seed,
        }
        if config.state_policy is not None:
            options["state_policy"] = config.state_policy
        wrapper = GXDReset(adam, model, **options)
        optimizer = wrapper
    order = torch.Generator().manual_seed(config.seed + 1)  # same minibatches for both runs
    loss_fn = nn.CrossEntropyLoss()
    out: dict[str, Any] = {"accuracy": [], "dead_fraction": [], "final_loss": [], "resets": []}
    resets_before = 0
    start = time.perf_counter()
    model.train()
    for task in range(config.tasks):
        targets = labels[task]
        loss = torch.zeros(())
        for _ in range(config.epochs):
            for batch in minibatches(config.samples, config.batch_size, order):
                loss = loss_fn(model(inputs[batch]), targets[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        accuracy, dead = evaluate(model, inputs, targets)
        resets_now = sum(wrapper.reset_counts.values()) if wrapper is not None else 0
        out["accuracy"].append(accuracy)
        out["dead_fraction"].append(dead)
        out["final_loss"].append(loss.item())
        out["resets"].append(resets_now - resets_before)
        resets_before = resets_now
        if log and (task + 1) % 10 == 0:
            print(f"  {method:9s} task {task + 1:3d}/{config.tasks}: accuracy {accuracy:.3f}")
    out["seconds"] = time.perf_counter() - start
    if wrapper is not None:
        out["gxd"] = {
            **wrapper.config.to_dict(),
            "layers": {name: info.num_units for name, info in wrapper.layers.items()},
            "skipped": dict(wrapper.skipped),
        }
    return out


def summarise(accuracy: Sequence[float], last: int = 10) -> dict[str, float]:
    """Mean accuracy over all tasks, the first and the last ``last`` tasks.

    Args:
        accuracy: per-task accuracies.
        last: window size.

    Returns:
        ``{"mean_all", "mean_first", "mean_last"}``.
    """
    window = max(1, min(last, len(accuracy)))
    return {
        "mean_all": sum(accuracy) / len(accuracy),
        "mean_first": sum(accuracy[:window]) / window,
        "mean_last": sum(accuracy[-window:]) / window,
    }


def print_table(adam: dict[str, Any], gxd: dict[str, Any]) -> None:
    """Print the per-task table of both runs.

    Args:
        adam: result of :func:`train_sequence` for plain Adam.
        gxd: result of :func:`train_sequence` for ``GXDReset``.
    """
    print()
    print("  task | Adam acc  dead | GXDReset acc  dead  resets")
    print("  -----+----------------+---------------------------")
    for task, row in enumerate(
        zip(
            adam["accuracy"],
            adam["dead_fraction"],
            gxd["accuracy"],
            gxd["dead_fraction"],
            gxd["resets"],
            strict=True,
        )
    ):
        a_acc, a_dead, g_acc, g_dead, resets = row
        print(
            f"  {task + 1:4d} |    {a_acc:.3f} {a_dead:5.0%} |        {g_acc:.3f} {g_dead:5.0%}"
            f"  {resets:6d}"
        )


def plot(results: dict[str, Any], path: Path) -> None:
    """Write the accuracy and dead-unit curves of both runs to a PNG.

    Args:
        results: the dictionary written to ``results.json``.
        path: output file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config, runs = results["config"], results["runs"]
    tasks = range(1, config["tasks"] + 1)
    gxd = results["gxd_reset"]
    gxd_label = (
        f"GXDReset(Adam)\nreplacement_rate={gxd['replacement_rate']:g}, "
        f"state_policy={gxd['state_policy']}"
    )
    fig, (ax_acc, ax_dead) = plt.subplots(1, 2, figsize=(12, 4.2))
    for key, label, color in (("adam", "Adam", "tab:red"), ("gxd_reset", gxd_label, "tab:blue")):
        ax_acc.plot(tasks, runs[key]["accuracy"], marker=".", color=color, label=label)
        ax_dead.plot(tasks, runs[key]["dead_fraction"], marker=".", color=color, label=label)
    ax_acc.axhline(1 / config["classes"], color="gray", linestyle="--", label="chance")
    ax_acc.set(
        xlabel="task",
        ylabel="training accuracy at the end of the task",
        ylim=(0, 1.02),
        title="Random-label memorisation: accuracy per task",
    )
    ax_dead.set(
        xlabel="task",
        ylabel="fraction of hidden units dead on all inputs",
        ylim=(0, 1.02),
        title="Dead ReLU units (both hidden layers)",
    )
    ax_acc.legend(loc="center right", fontsize=8)
    ax_dead.legend(loc="upper left", fontsize=8)
    fig.suptitle(
        f"MLP {config['input_dim']}-{'-'.join([str(config['width'])] * config['depth'])}-"
        f"{config['classes']}, {config['samples']} samples, "
        f"{config['steps_per_task']} Adam steps (lr={config['lr']:g}) per task, "
        f"seed {config['seed']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The parsed namespace.
    """
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(
        description="Plain Adam loses plasticity on random-label memorisation; GXDReset keeps it."
    )
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output directory")
    parser.add_argument("--tasks", type=int, default=None, help=f"tasks (default {defaults.tasks})")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    parser.add_argument("--quick", action="store_true", help="tiny configuration (seconds)")
    parser.add_argument(
        "--state-policy",
        choices=STATE_POLICIES,
        default=None,
        help=f"GXDReset state_policy (default: the library's, {LIBRARY_STATE_POLICY!r})",
    )
    parser.add_argument(
        "--replacement-rate",
        type=float,
        default=None,
        help=f"GXDReset replacement_rate (default {defaults.replacement_rate:g}, the library's)",
    )
    parser.add_argument(
        "--maturity",
        type=int,
        default=None,
        help=f"GXDReset maturity (default {defaults.maturity}, the library's)",
    )
    args = parser.parse_args(argv)
    if args.tasks is not None and args.tasks < 1:
        parser.error("--tasks must be at least 1")
    return args


def build_config(args: argparse.Namespace) -> DemoConfig:
    """Turn parsed arguments into a :class:`DemoConfig`.

    Args:
        args: the namespace of :func:`parse_args`.

    Returns:
        The configuration.
    """
    config = DemoConfig(seed=args.seed, state_policy=args.state_policy)
    if args.quick:
        config = replace(config, **QUICK)  # type: ignore[arg-type]
    overrides = {
        "tasks": args.tasks,
        "replacement_rate": args.replacement_rate,
        "maturity": args.maturity,
    }
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the demo: both trainings, the table, ``plasticity.png`` and ``results.json``.

    Args:
        argv: command-line arguments (see ``--help``); ``None`` reads ``sys.argv``.

    Returns:
        The results, as written to ``results.json``.
    """
    args = parse_args(argv)
    config = build_config(args)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these matrices are small: one thread is fastest (and steadiest)
    try:
        policy = config.state_policy or LIBRARY_STATE_POLICY
        print(
            f"Random-label memorisation: {config.samples} inputs of dim {config.input_dim}, "
            f"{config.classes} classes, {config.tasks} tasks"
        )
        print(
            f"MLP width {config.width} x {config.depth} hidden layers, Adam lr={config.lr:g} "
            f"betas={config.betas}, batch {config.batch_size}, "
            f"{config.steps_per_task} steps per task, seed {config.seed}"
        )
        print(
            f"GXDReset: replacement_rate={config.replacement_rate:g} (library default "
            f"{LIBRARY_REPLACEMENT_RATE:g}), "
            f"maturity={config.maturity} (library default 100), state_policy={policy!r}"
            + (" (library default)" if config.state_policy is None else "")
        )
        start = time.perf_counter()
        adam = train_sequence(config, "adam")
        gxd = train_sequence(config, "gxd_reset")
        total = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)

    print_table(adam, gxd)
    summary = {"adam": summarise(adam["accuracy"]), "gxd_reset": summarise(gxd["accuracy"])}
    window = min(10, config.tasks)
    print()
    for key, label in (("adam", "Adam"), ("gxd_reset", "GXDReset")):
        s = summary[key]
        print(
            f"  {label:8s}: mean accuracy over all tasks {s['mean_all']:.3f}, "
            f"first {window} {s['mean_first']:.3f}, last {window} {s['mean_last']:.3f}"
        )
    print(
        f"  GXDReset reset {sum(gxd['resets'])} units in layers {gxd['gxd']['layers']}; "
        f"time: Adam {adam['seconds']:.1f} s, GXDReset {gxd['seconds']:.1f} s"
    )

    results: dict[str, Any] = {
        "config": {**asdict(config), "steps_per_task": config.steps_per_task},
        "gxd_reset": gxd.pop("gxd"),
        "runs": {"adam": adam, "gxd_reset": gxd},
        "summary": summary,
        "seconds": total,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out / "plasticity.png")
    print(f"  wrote {out / 'plasticity.png'} and {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
