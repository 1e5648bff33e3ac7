"""Mixed precision with GXDReset: GradScaler, unscale_ + gradient clipping, autocast."""

import torch
from torch import nn

from gxd_optim import GXDReset

device = "cuda" if torch.cuda.is_available() else "cpu"
low = torch.float16 if device == "cuda" else torch.bfloat16  # autocast dtype
torch.manual_seed(0)
model = nn.Sequential(
    nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 5)
)
model.to(device)
scaler = torch.amp.GradScaler(device)
opt = GXDReset(
    torch.optim.AdamW(model.parameters(), lr=1e-3),
    model,
    replacement_rate=1e-3,
    maturity=20,
    grad_scaler=scaler,  # needed because we call scaler.unscale_(opt) below
)

for _step in range(120):
    x = torch.randn(64, 20, device=device)
    y = (x[:, :5] > 0).long().argmax(1)
    opt.zero_grad()
    with torch.autocast(device, dtype=low):
        loss = nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)  # gradients (and, inside step, the statistics) lose the scale
    nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    scaler.step(opt)  # skipped when a gradient is inf/NaN: then nothing is reset either
    scaler.update()

print(f"loss {loss.item():.3f}, resets {opt.reset_counts}, steps {opt.steps}")
