"""An EMA teacher (AveragedModel) next to GXDReset: the copy never feeds the statistics, and every
reset is mirrored into it."""

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from gxd_optim import GXDReset, mirror_resets

torch.manual_seed(0)
model = nn.Sequential(
    nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 5)
)
opt = GXDReset(
    torch.optim.Adam(model.parameters(), lr=1e-3),
    model,
    replacement_rate=1e-3,
    maturity=20,
)
opt.discover(torch.randn(2, 20))  # find the units now, so resets can be mirrored from the start
teacher = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.99))
mirror_resets(opt, teacher)

# a hook of your own sees every reset too, e.g. to log it
log: list[tuple[str, int]] = []


def record(name: str, index: Tensor) -> None:
    log.append((name, index.numel()))


opt.register_reset_hook(record)

for _step in range(150):
    x = torch.randn(64, 20)
    y = (x[:, :5] > 0).long().argmax(1)
    opt.zero_grad()
    with torch.no_grad():
        target = teacher(x).softmax(-1)  # the teacher's forward never reaches the statistics
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y) + nn.functional.cross_entropy(logits, target)
    loss.backward()
    opt.step()
    teacher.update_parameters(model)

print(f"resets {opt.reset_counts}, mirrored into the teacher; {len(log)} reset events logged")
