"""Diagnostics (docs/howto/diagnostics.md): utilities, predicted and realised costs, manual
resets, reset hooks, a mirrored EMA copy and the per-layer table, on a small regression MLP
(a few seconds on CPU). ``loader`` stands for your DataLoader."""

import copy

import torch
from torch import nn

from gxd_optim import GXDReset, mirror_resets

# --8<-- [start:import]
from gxd_optim.diagnostics import measure_realised_cost

# --8<-- [end:import]

torch.manual_seed(0)
teacher = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)).requires_grad_(False)
loader = [(x, teacher(x)) for x in torch.randn(300, 64, 8)]
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
opt = GXDReset(
    torch.optim.Adam(model.parameters(), lr=1e-3), model, replacement_rate=1e-2, maturity=50
)
loss_fn = nn.functional.mse_loss

# --8<-- [start:realised]
batch = {}
meter = measure_realised_cost(opt, lambda: loss_fn(model(batch["x"]), batch["y"]))
for x, y in loader:
    batch["x"], batch["y"] = x, y  # the loss the meter evaluates is this batch's
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    opt.step()
print(opt.reset_log[-1])
# --8<-- [end:realised]

# --8<-- [start:utilities]
for name, u in opt.utilities().items():
    print(f"{name}: min {u.min():.2e}  median {u.median():.2e}  max {u.max():.2e}")
# --8<-- [end:utilities]

# --8<-- [start:summary]
print(opt.summary())
# --8<-- [end:summary]

# --8<-- [start:predicted]
x = torch.randn(256, 8)
y = teacher(x) + 0.3  # a target the model does not fit yet, as after a change of task

opt.zero_grad()
loss = nn.functional.mse_loss(model(x), y)
loss.backward()
cost = opt.predicted_cost("0")  # [num_units], before any step

opt.reset_units("0", [3, 7])
with torch.no_grad():  # a no-grad forward records nothing
    after = nn.functional.mse_loss(model(x), y)
print(f"true change {after - loss:.3g}, first-order estimate {cost[3] + cost[7]:.3g}")
opt.zero_grad()  # drop this batch's gradients and statistics
# --8<-- [end:predicted]

# --8<-- [start:manual]
opt.reset_units("0", [0, 5, 9])
opt.reset_units("0", torch.tensor([1, 2]))
# --8<-- [end:manual]

# --8<-- [start:counts]
print(opt.reset_counts)
# --8<-- [end:counts]

# --8<-- [start:hook]
handle = opt.register_reset_hook(lambda name, indices: print(f"reset {name}: {indices.tolist()}"))
opt.reset_units("2", [4, 11])  # automatic resets in opt.step() call it too
handle.remove()
# --8<-- [end:hook]

# --8<-- [start:mirror]
ema = copy.deepcopy(model)  # the copy's hooks are inert: it records nothing
mirror_resets(opt, ema)  # every later reset of `model` is applied to `ema` too
# --8<-- [end:mirror]

for x, y in loader[:100]:
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    # --8<-- [start:ema]
    opt.step()
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
            p_ema.lerp_(p, 1 - 0.999)
    # --8<-- [end:ema]
