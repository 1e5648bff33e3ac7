"""Diagnostics (docs/howto/diagnostics.md): utilities, the per-layer table, the reset log with
realised costs, predicted costs, manual resets, reset hooks and a mirrored EMA copy, on a small
regression MLP (a few seconds on CPU).

The page shows this program in order, section by section; run it with ``python
examples/diagnostics.py``.
"""

# --8<-- [start:train]
import copy

import torch
from torch import nn

from gxd_optim import GXDReset, mirror_resets
from gxd_optim.diagnostics import measure_realised_cost

torch.manual_seed(0)
teacher = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
teacher.requires_grad_(False)
batches = [(x, teacher(x)) for x in torch.randn(300, 64, 8)]  # stands for a DataLoader

model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
opt = GXDReset(
    torch.optim.Adam(model.parameters(), lr=1e-3),
    model,
    replacement_rate=1e-2,  # frequent resets, to see many in 300 steps
    maturity=50,
)
loss_fn = nn.functional.mse_loss

current = {}  # the batch being trained on, for the meter's loss
meter = measure_realised_cost(opt, lambda: loss_fn(model(current["x"]), current["y"]))
for x, y in batches:
    current["x"], current["y"] = x, y
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    opt.step()
# --8<-- [end:train]

# --8<-- [start:utilities]
for name, u in opt.utilities().items():
    print(f"{name}: min {u.min():.2e}  median {u.median():.2e}  max {u.max():.2e}")
# --8<-- [end:utilities]

# --8<-- [start:summary]
print(opt.summary())
# --8<-- [end:summary]

# --8<-- [start:realised]
last = opt.reset_log[-1]
print(f"step {last.step}, layer {last.layer!r}, {last.units} unit(s)")
print(f"predicted {last.predicted:.3g}, realised {last.realised:.3g}")
meter.remove()  # stop measuring
# --8<-- [end:realised]

# --8<-- [start:predicted]
x = torch.randn(256, 8)
y = teacher(x) + 0.3  # a target the model does not fit yet, as after a change of task

opt.zero_grad()
loss = loss_fn(model(x), y)
loss.backward()
cost = opt.predicted_cost("0")  # [num_units], before any step

opt.reset_units("0", [3, 7])
with torch.no_grad():  # a no-grad forward records nothing
    after = loss_fn(model(x), y)
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
def announce(name: str, indices: torch.Tensor) -> None:
    print(f"reset {name}: {indices.tolist()}")


handle = opt.register_reset_hook(announce)
opt.reset_units("2", [4, 11])  # automatic resets in opt.step() call it too
handle.remove()
# --8<-- [end:hook]

# --8<-- [start:mirror]
ema = copy.deepcopy(model)  # the copy's hooks are inert: it records nothing
mirror_resets(opt, ema)  # every later reset of `model` is applied to `ema` too

for x, y in batches[:100]:
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    opt.step()  # resets, mirrored into `ema` by the hooks
    with torch.no_grad():  # then the EMA update, as usual
        for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
            p_ema.lerp_(p, 1 - 0.999)
print(f"resets {opt.reset_counts}, each mirrored into the EMA copy")
# --8<-- [end:mirror]
