"""GXDReset in a continual-learning loop that changes its classifier at every task (a few s).

Class-incremental code grows the classifier when new classes arrive, keeping the old classes'
weights (as Avalanche's ``IncrementalClassifier`` does); other protocols give every task a fresh
head. Either way the model's layers change between tasks. The wrapper notices the new module at the
next step, finds the units again in the next training pass, and keeps the statistics of every layer
that did not change; it never writes to the head that was replaced. Run it with ``python
examples/continual_heads.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gxd_optim import GXDReset


class Learner(nn.Module):
    def __init__(self, inputs: int = 16, hidden: int = 64, classes: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def task_data(task: int, classes: int, n: int = 64) -> tuple[Tensor, Tensor]:
    """Inputs and labels of a task: two new classes, each around its own centre."""
    g = torch.Generator().manual_seed(task)
    y = torch.randint(2 * task, 2 * task + 2, (n,), generator=g)
    centres = torch.randn(classes, 16, generator=torch.Generator().manual_seed(99))
    return centres[y] + 0.5 * torch.randn(n, 16, generator=g), y


# --8<-- [start:loop]
def grown(head: nn.Linear, classes: int) -> nn.Linear:
    """A classifier with ``classes`` outputs whose first rows are ``head``'s."""
    bigger = nn.Linear(head.in_features, classes)
    with torch.no_grad():
        bigger.weight[: head.out_features] = head.weight
        bigger.bias[: head.out_features] = head.bias
    return bigger


def train(tasks: int = 4, steps: int = 150, grow: bool = True) -> tuple[Learner, GXDReset]:
    torch.manual_seed(0)
    model = Learner()
    opt = GXDReset(
        torch.optim.Adam(model.parameters(), lr=1e-3),
        model,
        replacement_rate=1e-3,
        maturity=50,
    )
    for task in range(tasks):
        classes = 2 * (task + 1)
        if task > 0:  # new classes: a bigger classifier, or a fresh head for the task
            model.head = grown(model.head, classes) if grow else nn.Linear(64, classes)
            opt.optimizer.param_groups[0]["params"] = list(model.parameters())
            opt.optimizer.state.clear()  # what Avalanche's reset_optimizer does
        for _ in range(steps):
            x, y = task_data(task, classes)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()  # the step after a change finds the units again
        print(f"task {task}: {classes} classes, resets so far {opt.reset_counts}")
    return model, opt


# --8<-- [end:loop]


if __name__ == "__main__":
    train(grow=True)
    train(grow=False)
