"""Reinforcement learning in plain PyTorch: a Q-network with a soft-updated target network.

The rewards of a small random MDP change every 500 steps, so the Q-network must keep learning. The
target network is a copy of the Q-network that follows it slowly (Polyak averaging, as in DDPG, TD3
and SAC); ``mirror_resets`` carries every reset of the Q-network over into it. A few seconds on CPU;
shown on docs/howto/rl.md.
"""

import copy

import torch
from torch import nn

from gxd_optim import GXDReset, mirror_resets

torch.manual_seed(0)
states, actions, gamma, tau = 16, 4, 0.9, 0.01
q_net = nn.Sequential(
    nn.Linear(states, 64),
    nn.ReLU(),
    nn.Linear(64, 64),
    nn.ReLU(),
    nn.Linear(64, actions),
)
target = copy.deepcopy(q_net)  # the copy's hooks are inert: it records nothing
opt = GXDReset(
    torch.optim.Adam(q_net.parameters(), lr=1e-3),
    q_net,
    replacement_rate=1e-3,  # frequent resets, to see them in a short run
    maturity=50,
)
opt.discover(torch.zeros(1, states))  # find the units now, so resets are mirrored from step 1
mirror_resets(opt, target)

next_state = torch.randint(0, states, (states, actions))  # fixed transitions
for step in range(1500):
    if step % 500 == 0:
        rewards = torch.randn(states, actions)  # the rewards change
    s = torch.randint(0, states, (128,))  # a batch of transitions, as from a replay buffer
    a = torch.randint(0, actions, (128,))
    x = nn.functional.one_hot(s, states).float()
    x_next = nn.functional.one_hot(next_state[s, a], states).float()
    with torch.no_grad():  # the target network's forward pass records nothing
        y = rewards[s, a] + gamma * target(x_next).max(1).values
    loss = nn.functional.mse_loss(q_net(x).gather(1, a[:, None]).squeeze(1), y)
    opt.zero_grad()
    loss.backward()
    opt.step()  # may reset units of q_net, and the same units of target
    with torch.no_grad():  # the soft update of the target network
        for p_target, p in zip(target.parameters(), q_net.parameters(), strict=True):
            p_target.lerp_(p, tau)
    if (step + 1) % 500 == 0:
        print(f"step {step + 1}: resets {opt.reset_counts}")
