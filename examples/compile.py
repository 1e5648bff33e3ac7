"""GXDReset with a torch.compile'd model: the hooks run eagerly between compiled graphs."""

import sys

import torch
from torch import nn

from gxd_optim import GXDReset

# inductor needs a C compiler on CPU; aot_eager captures the same graphs without one
backend = sys.argv[1] if len(sys.argv) > 1 else "aot_eager"
torch.manual_seed(0)
model = nn.Sequential(
    nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 5)
)
compiled = torch.compile(model, backend=backend)
# either order works: wrap the compiled module, or wrap `model` and compile afterwards
opt = GXDReset(torch.optim.Adam(model.parameters(), lr=1e-3), compiled, maturity=20)

for _step in range(100):
    x = torch.randn(64, 20)
    y = (x[:, :5] > 0).long().argmax(1)
    opt.zero_grad()
    nn.functional.cross_entropy(compiled(x), y).backward()
    opt.step()

print(f"layers {sorted(opt.layers)}, resets {opt.reset_counts}")
