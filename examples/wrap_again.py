"""Wrap one model again, and two wrappers side by side (about 1 s on CPU).

A fresh optimizer per task: ``close()`` the old wrapper first. An actor and a critic
with optimizers of their own: one wrapper each. Shown on docs/howto/wrap.md.
"""

import torch
from torch import nn

from gxd_optim import GXDReset


def train(model: nn.Module, opt: GXDReset, steps: int = 20) -> None:
    for _ in range(steps):
        x = torch.randn(32, 8)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
for _task in range(3):  # a fresh optimizer for every task
    opt = GXDReset(torch.optim.Adam(model.parameters(), lr=1e-3), model)
    train(model, opt)
    opt.close()  # removes its hooks; without it the next wrapper is refused
print("three wrappers, one after the other: fine")

# Two wrappers over different parameters of one model work side by side.
agent = nn.ModuleDict(
    {
        "actor": nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2)),
        "critic": nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)),
    }
)
actor_opt = GXDReset(torch.optim.Adam(agent["actor"].parameters()), agent["actor"])
critic_opt = GXDReset(torch.optim.Adam(agent["critic"].parameters()), agent["critic"])
train(agent["actor"], actor_opt)
train(agent["critic"], critic_opt)
print(f"actor layers {list(actor_opt.layers)}, critic layers {list(critic_opt.layers)}")

# A second open wrapper that would reset the same parameters is refused.
try:
    again = GXDReset(torch.optim.Adam(agent["actor"].parameters()), agent["actor"])
    train(agent["actor"], again, steps=1)
except ValueError as error:
    print(f"refused: {error}")
