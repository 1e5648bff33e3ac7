"""Quick start: a short, complete training loop with GXDReset (a few seconds on CPU).

The target function changes every 500 steps, as in continual learning. The only change
to a plain training loop is the line that wraps the optimizer. README.md and the home
page show this program and what it prints; run it with ``python
examples/quickstart.py``.
"""

import torch
from torch import nn

from gxd_optim import GXDReset

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
opt = GXDReset(torch.optim.Adam(model.parameters(), lr=1e-3), model)

for task in range(4):
    teacher = nn.Linear(8, 1)  # a new target function for every task
    for _ in range(500):
        x = torch.randn(32, 8)
        y = teacher(x).detach()
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()  # the inner Adam step, then resets of the cheapest mature units
    print(f"task {task}: loss {loss.item():.4f}, units reset so far {opt.reset_counts}")

print("layers whose units are reset:", list(opt.layers))
print("layers left alone:", dict(opt.skipped))
