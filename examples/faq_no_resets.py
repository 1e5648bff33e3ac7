"""FAQ: why are no units reset? Read the budget from ``opt.layers`` (about 1 s on CPU).

A unit becomes eligible once it is older than ``maturity`` steps; each step then adds
``replacement_rate × eligible units`` to its layer's budget, and a unit is reset when
the budget reaches one. A small layer with the defaults waits long for its first reset.
Shown on docs/faq.md.
"""

import torch
from torch import nn

from gxd_optim import GXDReset

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
opt = GXDReset(torch.optim.Adam(model.parameters(), lr=1e-3), model)
for _ in range(200):
    x = torch.randn(16, 10)
    opt.zero_grad()
    nn.functional.mse_loss(model(x), x[:, :1]).backward()
    opt.step()
print(f"after {opt.steps} steps: resets {opt.reset_counts}")

rate, maturity = 3e-4, 100  # the defaults
for name, info in opt.layers.items():
    every = 1 / (rate * info.num_units)
    print(f"layer {name}: {info.num_units} units, one reset every {every:.0f} steps")
    print(f"  from step {maturity} on, so the first near step {maturity + every:.0f}")
