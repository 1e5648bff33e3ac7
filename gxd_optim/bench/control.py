"""A reinforcement-learning problem: DQN on CartPole whose observations change every task.

Each task shows the agent CartPole's four observations through a new sensor map: a random
permutation with random signs (the dynamics and the reward stay). The learner is a small DQN
(Mnih et al. 2015, as stable-baselines3 runs it): an MLP Q-network, ε-greedy actions with ε
annealed from 1 to 0.05 over the first fifth of every task, a replay buffer, a target
network copied every ``target_every`` steps, and one gradient step (Huber loss on the TD
target) per environment step. The environment is gymnasium's ``CartPole-v1``, stepped in
this process; nothing is downloaded.

A batch is ``(observations, [action, target])``: `td_loss` reads the Q-value of the action
taken. A segment is one task; its performance is the mean return of the last
`LAST_EPISODES` episodes that ended in it.

Examples:
    >>> s = CartPoleSettings(tasks=2, steps=64, warmup=64, buffer=256, batch=16)
    >>> model, optimizer, segments = dqn_on_cartpole(s, 0, torch.device("cpu"))
    >>> segment = next(segments)
    >>> x, y = next(iter(segment.batches))
    >>> x.shape, y.shape, float(td_loss(model(x), y)) >= 0
    (torch.Size([16, 4]), torch.Size([16, 2]), True)
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models import check_activation, mlp
from .segments import Batch, Segment
from .settings import check_positive

__all__ = ["HELD_OUT", "LAST_EPISODES", "CartPoleSettings", "dqn_on_cartpole", "td_loss"]

OBSERVATIONS, ACTIONS = 4, 2
LAST_EPISODES = 10
"""Episodes at the end of a task whose mean return is the task's performance."""
HELD_OUT = 512
"""Transitions of a task on which its dormant units and the cost of resets are measured,
sampled from its buffer at its end (filled in once the task's last batch is trained)."""


@dataclass(frozen=True)
class CartPoleSettings:
    """DQN on CartPole with a new observation map per task (stable-baselines3's DQN
    defaults where they fit a CPU: ReLU MLP 64-64, Adam, batch 64)."""

    tasks: int = 10
    steps: int = 4000
    warmup: int = 1000
    buffer: int = 10_000
    batch: int = 64
    hidden: tuple[int, ...] = (64, 64)
    lr: float = 1e-3
    gamma: float = 0.99
    target_every: int = 250
    activation: str = "relu"

    def __post_init__(self) -> None:
        check_positive(self)
        check_activation(self.activation)
        if not self.gamma < 1:
            raise ValueError(f"setting gamma must be below 1, got {self.gamma}")

    @property
    def segments(self) -> int:
        """Tasks."""
        return self.tasks

    @property
    def steps_per_segment(self) -> int:
        """Environment and gradient steps per task."""
        return self.steps


def td_loss(q_values: Tensor, action_and_target: Tensor) -> Tensor:
    """Huber loss between the Q-value of each action taken and its TD target."""
    taken = q_values.gather(1, action_and_target[:, :1].long()).squeeze(1)
    return F.smooth_l1_loss(taken, action_and_target[:, 1])


class _Agent:
    """The environment, the replay buffer and the target network of one run."""

    def __init__(self, s: CartPoleSettings, model: nn.Module, seed: int) -> None:
        import gymnasium

        self.s, self.model = s, model
        self.env = gymnasium.make("CartPole-v1")
        self.rng = np.random.default_rng(seed)
        self.observation, _ = self.env.reset(seed=seed)
        self.target = copy.deepcopy(model).requires_grad_(False)
        self.states = torch.zeros(s.buffer, OBSERVATIONS)
        self.next_states = torch.zeros(s.buffer, OBSERVATIONS)
        self.actions = torch.zeros(s.buffer, dtype=torch.int64)
        self.rewards = torch.zeros(s.buffer)
        self.done = torch.zeros(s.buffer)
        self.size = self.cursor = self.steps = 0
        self.map = torch.eye(OBSERVATIONS)
        self.episode_return = 0.0
        self.returns: list[float] = []

    def new_task(self) -> None:
        """A new sensor map (permutation with signs); the buffer forgets the old task."""
        order = self.rng.permutation(OBSERVATIONS)
        signs = self.rng.choice([-1.0, 1.0], size=OBSERVATIONS)
        flips = torch.tensor(signs, dtype=torch.float32)[:, None]
        self.map = torch.eye(OBSERVATIONS)[torch.as_tensor(order)] * flips
        self.size = self.cursor = 0

    def sensed(self, observation: np.ndarray) -> Tensor:
        return self.map @ torch.as_tensor(observation, dtype=torch.float32)

    def act(self, epsilon: float) -> None:
        """One environment step, ε-greedy, into the buffer."""
        state = self.sensed(self.observation)
        if self.rng.random() < epsilon:
            action = int(self.rng.integers(ACTIONS))
        else:
            with torch.no_grad():
                action = int(self.model(state[None]).argmax())
        observation, reward, terminated, truncated, _ = self.env.step(action)
        i = self.cursor
        self.states[i], self.next_states[i] = state, self.sensed(observation)
        self.actions[i], self.rewards[i], self.done[i] = action, float(reward), float(terminated)
        self.cursor, self.size = (i + 1) % self.s.buffer, min(self.size + 1, self.s.buffer)
        self.episode_return += float(reward)
        self.observation = observation
        if terminated or truncated:
            self.returns.append(self.episode_return)
            self.episode_return = 0.0
            self.observation, _ = self.env.reset()

    def sample(self, count: int) -> Batch:
        """``(states, [action, TD target])`` of ``count`` transitions from the buffer."""
        index = torch.as_tensor(self.rng.integers(self.size, size=count))
        with torch.no_grad():
            best = self.target(self.next_states[index]).max(1).values
        target = self.rewards[index] + self.s.gamma * (1.0 - self.done[index]) * best
        return self.states[index], torch.stack([self.actions[index].float(), target], 1)

    def task(self, held_out: Batch, probe: Tensor) -> Iterator[Batch]:
        """One task: ``steps`` environment steps, each followed by a training batch; at its end
        ``held_out`` and ``probe`` are filled from the task's buffer (`HELD_OUT` transitions,
        sampled after the last training batch, and their states)."""
        self.new_task()
        for _ in range(self.s.warmup):  # the new task's first transitions, acting at random
            self.act(1.0)
        anneal = max(1, self.s.steps // 5)
        for step in range(self.s.steps):
            self.act(max(0.05, 1.0 - 0.95 * step / anneal))
            if self.steps % self.s.target_every == 0:
                self.target.load_state_dict(self.model.state_dict())
            self.steps += 1
            yield self.sample(self.s.batch)
        states, targets = self.sample(HELD_OUT)
        held_out[0].copy_(states)
        held_out[1].copy_(targets)
        probe.copy_(states)


def dqn_on_cartpole(
    s: CartPoleSettings, seed: int, device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer, Iterator[Segment]]:
    """The Q-network, its Adam optimizer and the tasks as segments (CPU only: the agent's
    buffers live there).

    Raises:
        ValueError: a device other than the CPU.
    """
    if device.type != "cpu":
        raise ValueError("the cartpole problem runs on the CPU (its environment does)")
    model = mlp((OBSERVATIONS, *s.hidden, ACTIONS), seed, s.activation)
    agent = _Agent(s, model, seed)

    def mean_return(_: Tensor | None) -> float:
        returns, agent.returns = agent.returns[-LAST_EPISODES:], []
        return float(np.mean(returns)) if returns else agent.episode_return

    def segments() -> Iterator[Segment]:
        for _ in range(s.tasks):
            held_out = (torch.zeros(HELD_OUT, OBSERVATIONS), torch.zeros(HELD_OUT, 2))
            probe = torch.zeros(HELD_OUT, OBSERVATIONS)
            yield Segment(agent.task(held_out, probe), mean_return, probe, held_out)

    return model, torch.optim.Adam(model.parameters(), lr=s.lr), segments()
