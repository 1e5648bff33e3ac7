"""GXDReset next to the other ways of keeping plasticity, on one small continual problem.

Each method trains the same network on the same stream: a regression target that changes every 200
steps. Continual backprop, ReDo and GraMa are unit resets with another criterion and selection rule,
so they are ``GXDReset`` settings here; Shrink & Perturb and L2-Init act on every weight and are a
few lines in the training loop. A smoke run of a few seconds per method, to copy and run on your own
problem: it is not a benchmark (see the Benchmarks page for one). Shown on docs/comparison.md.
"""

import torch
from torch import nn

from gxd_optim import GXDReset

RESETS = {
    "GXD (defaults)": {},
    "continual backprop": {"utility": "contribution", "replacement_rate": 1e-4},
    "ReDo": {
        "utility": "activation",
        "selection": "threshold",
        "threshold": 0.1,
        "interval": 250,
    },
    "GraMa": {"utility": "gradient", "selection": "threshold", "interval": 250},
}


def shrink_perturb_(model: nn.Module, shrink: float = 0.8, noise: float = 0.01) -> None:
    """Shrink & Perturb: scale every weight down and add a little noise."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(shrink).add_(noise * torch.randn_like(p))


def l2_init(model: nn.Module, initial: list[torch.Tensor]) -> torch.Tensor:
    """L2-Init: the squared distance of the weights from their initial values."""
    return sum((p - p0).pow(2).sum() for p, p0 in zip(model.parameters(), initial, strict=True))


def run(method: str, tasks: int = 3, steps: int = 200) -> str:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    inner = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt = GXDReset(inner, model, **RESETS[method]) if method in RESETS else inner
    initial = [p.detach().clone() for p in model.parameters()]
    for task in range(tasks):
        teacher = nn.Linear(8, 1)  # a new target function for every task
        if method == "Shrink & Perturb" and task > 0:
            shrink_perturb_(model)  # at each task boundary
        for _ in range(steps):
            x = torch.randn(32, 8)
            loss = nn.functional.mse_loss(model(x), teacher(x).detach())
            if method == "L2-Init":
                loss = loss + 1e-4 * l2_init(model, initial)
            opt.zero_grad()
            loss.backward()
            opt.step()
    resets = sum(opt.reset_counts.values()) if isinstance(opt, GXDReset) else "-"
    return f"{method:<20} trained {tasks} tasks, units reset: {resets}"


for method in [*RESETS, "Shrink & Perturb", "L2-Init", "plain Adam"]:
    print(run(method))
