"""A fuller training loop: gradient accumulation, an LR scheduler and validation (3 s).

Shown on docs/howto/wrap.md; run it with ``python examples/wrap_loop.py``.
"""

import torch
from torch import nn

from gxd_optim import GXDReset

torch.manual_seed(0)
inputs = torch.randn(4096, 20)
targets = inputs[:, :5].argmax(1)
train_batches = list(zip(inputs[:3584].split(16), targets[:3584].split(16), strict=True))
x_val, y_val = inputs[3584:], targets[3584:]

model = nn.Sequential(
    nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 5)
)
opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), model)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=400)  # pass the wrapper
accumulate = 2  # micro-batches per optimizer step

for epoch in range(3):
    model.train()
    for i, (x, y) in enumerate(train_batches):
        loss = nn.functional.cross_entropy(model(x), y) / accumulate
        loss.backward()  # statistics of every micro-batch count towards the next step
        if (i + 1) % accumulate == 0:
            opt.step()  # one step for two micro-batches: statistics, then resets
            opt.zero_grad()  # after the step, never between backward() and step()
            scheduler.step()

    model.eval()  # eval-mode and no-grad forward passes record nothing
    with torch.no_grad():
        accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
    lr = opt.param_groups[0]["lr"]
    print(f"epoch {epoch}: {opt.steps} steps, val accuracy {accuracy:.3f}, lr {lr:.4f}")

print(f"resets {opt.reset_counts}")
