"""FAQ: a model left in eval mode. The step raises, before anything moves (about 1 s).

Eval-mode and no-grad forward passes record nothing, so validation is safe. But a
training step after a forward pass in eval mode has no statistics for the gradients it
would step, and ``opt.step()`` says so instead of silently resetting nothing. Shown on
docs/faq.md.
"""

import torch
from torch import nn

from gxd_optim import GXDReset

model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
opt = GXDReset(torch.optim.Adam(model.parameters(), lr=1e-3), model)

model.eval()  # e.g. left over from a validation pass
x = torch.randn(16, 10)
opt.zero_grad()
nn.functional.mse_loss(model(x), x[:, :1]).backward()
try:
    opt.step()
except RuntimeError as error:
    print(f"RuntimeError: {error}")

model.train()  # the fix
opt.zero_grad()
nn.functional.mse_loss(model(x), x[:, :1]).backward()
opt.step()
print(f"after model.train(): {opt.steps} step, layers {list(opt.layers)}")
