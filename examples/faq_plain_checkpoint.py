"""FAQ: resume with GXDReset from a checkpoint of a plain optimizer (about 1 s on CPU).

The inner optimizer's state is restored, with a warning: the wrapper's statistics start
from scratch. Shown on docs/faq.md.
"""

import warnings

import torch
from torch import nn

from gxd_optim import GXDReset

model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
plain = torch.optim.Adam(model.parameters(), lr=1e-3)
for _ in range(5):  # training without GXDReset
    x = torch.randn(16, 10)
    plain.zero_grad()
    nn.functional.mse_loss(model(x), x[:, :1]).backward()
    plain.step()
checkpoint = {"model": model.state_dict(), "opt": plain.state_dict()}

# Later: the same model, now trained with GXDReset.
model.load_state_dict(checkpoint["model"])
opt = GXDReset(torch.optim.Adam(model.parameters(), lr=1e-3), model)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    opt.load_state_dict(checkpoint["opt"])
for warning in caught:
    print(f"{warning.category.__name__}: {warning.message}")
print(f"Adam's step count restored: {opt.state[model[0].weight]['step'].item():.0f}")
