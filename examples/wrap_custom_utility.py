"""A criterion of your own: rank units by gradient magnitude instead of GXD (about 2 s).

A utility function gets, for one (producer, consumer) pair and one backward pass, ``h``
and ``grad`` of shape ``[N, U, P]`` (samples, units, positions) and ``reference`` of
shape ``[U]``, and returns per-sample scores ``[N, U]``. Shown on docs/howto/wrap.md.
"""

import torch
from torch import nn

from gxd_optim import GXDReset


def grad_magnitude(h: torch.Tensor, grad: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return grad.abs().sum(-1)  # per-sample scores [N, U]


torch.manual_seed(0)
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
opt = GXDReset(
    torch.optim.Adam(model.parameters(), lr=1e-3),
    model,
    utility=grad_magnitude,
    replacement_rate=1e-2,  # frequent resets, to see some in 300 steps
)
for _ in range(300):
    x = torch.randn(64, 20)
    y = x[:, :5].argmax(1)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
print(f"gradient-magnitude criterion: resets {opt.reset_counts}")
