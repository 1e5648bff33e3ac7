"""Wrap your optimizer (docs/howto/wrap.md): the training loop, a custom utility, gradient
accumulation, validation, a learning-rate scheduler, checkpoints and copies. A few seconds on
CPU; ``loader`` stands for your DataLoader."""

import copy
import tempfile
from pathlib import Path

# --8<-- [start:loop]
import torch
from torch import nn

from gxd_optim import GXDReset

torch.manual_seed(0)
loader = [(x, x[:, :5].argmax(1)) for x in torch.randn(150, 64, 20)]  # stands for a DataLoader

model = nn.Sequential(
    nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 5)
)
opt = GXDReset(torch.optim.AdamW(model.parameters(), lr=1e-3), model)

for x, y in loader:
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
# --8<-- [end:loop]
print(f"trained {opt.steps} steps, resets {opt.reset_counts}")

micro_batches = loader[:4]
# --8<-- [start:accumulation]
opt.zero_grad()
for x, y in micro_batches:
    loss = nn.functional.cross_entropy(model(x), y) / len(micro_batches)
    loss.backward()
opt.step()  # one step: statistics of all micro-batches, then resets
# --8<-- [end:accumulation]
print(f"accumulated {len(micro_batches)} micro-batches into step {opt.steps}")

x_val, y_val = loader[0]
# --8<-- [start:validation]
model.eval()
with torch.no_grad():
    val_loss = nn.functional.cross_entropy(model(x_val), y_val)
model.train()
# --8<-- [end:validation]

with tempfile.TemporaryDirectory() as scratch:
    checkpoint_path = Path(scratch) / "checkpoint.pt"
    # --8<-- [start:save]
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, checkpoint_path)
    # --8<-- [end:save]
    trained, trained_opt = model, opt
    # --8<-- [start:resume]
    checkpoint = torch.load(checkpoint_path)
    model = nn.Sequential(
        nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 5)
    )
    model.load_state_dict(checkpoint["model"])
    opt = GXDReset(torch.optim.AdamW(model.parameters(), lr=1e-3), model)
    opt.load_state_dict(checkpoint["opt"])
    # --8<-- [end:resume]

for net, wrapper in ((trained, trained_opt), (model, opt)):  # train both on the same batches
    for x, y in loader:
        wrapper.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        wrapper.step()
same = all(torch.equal(p, q) for p, q in zip(trained.parameters(), model.parameters(), strict=True))
print(f"resumed run bit for bit: {same}, resets {opt.reset_counts}")

# --8<-- [start:copy]
model2, opt2 = copy.deepcopy((model, opt))  # an independent model and wrapper
# --8<-- [end:copy]
owned = {id(p) for group in opt2.param_groups for p in group["params"]}
print(f"the copy steps its own parameters: {owned == {id(p) for p in model2.parameters()}}")
opt.close()  # before wrapping the same model again


# --8<-- [start:utility]
def grad_magnitude(h: torch.Tensor, grad: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return grad.abs().sum(-1)  # per-sample scores [N, U]


opt = GXDReset(torch.optim.Adam(model.parameters(), lr=1e-3), model, utility=grad_magnitude)
# --8<-- [end:utility]
for x, y in loader:
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
print(f"gradient-magnitude criterion: resets {opt.reset_counts}")
opt.close()

# --8<-- [start:scheduler]
opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), model)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10_000)

for x, y in loader:
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    scheduler.step()
# --8<-- [end:scheduler]
print(f"learning rate after {opt.steps} steps: {opt.param_groups[0]['lr']:.6f}")
