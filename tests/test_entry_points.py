"""Training passes that do not enter through the model's ``forward`` (pure torch): the units
are found from the pass itself, and then tracked and reset like any others."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gxd_optim import GXDReset

OUTPUT = "its units are part of the model's output"


class Policy(nn.Module):
    """An actor-critic policy shaped like stable-baselines3's: trained through
    ``evaluate_actions``, which calls the submodules and builds a distribution outside them."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Flatten()
        self.pi = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.vf = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.action_net = nn.Linear(16, 3)
        self.value_net = nn.Linear(16, 1)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:  # used for acting, not training
        features = self.features(obs)
        return self.action_net(self.pi(features)), self.value_net(self.vf(features))

    def evaluate_actions(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features = self.features(obs)
        distribution = torch.distributions.Categorical(logits=self.action_net(self.pi(features)))
        values = self.value_net(self.vf(features)).flatten()
        return values, distribution.log_prob(actions), distribution.entropy()


def _policy_loss(policy: Policy, g: torch.Generator) -> Tensor:
    obs, actions = torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)
    values, log_prob, entropy = policy.evaluate_actions(obs, actions)
    advantages, returns = torch.randn(32, generator=g), torch.randn(32, generator=g)
    return -(log_prob * advantages).mean() + F.mse_loss(values, returns) - 0.01 * entropy.mean()


def test_a_policy_trained_through_another_method_is_found_tracked_and_reset() -> None:
    torch.manual_seed(0)
    policy = Policy()
    opt = GXDReset(torch.optim.Adam(policy.parameters()), policy, replacement_rate=0.05, maturity=3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        policy(torch.randn(8, 4))  # acting, as a rollout does: finds nothing, records nothing
    for _ in range(20):
        loss = _policy_loss(policy, g)
        opt.zero_grad()  # between the forward and the backward, as PPO does
        loss.backward()
        opt.step()
    assert sorted(opt.layers) == ["pi.0", "pi.2", "vf.0", "vf.2"]
    assert opt.layers["pi.2"].consumers == ("action_net",)
    assert opt.skipped["action_net"] == opt.skipped["value_net"] == OUTPUT
    assert opt.steps == 19  # the first pass was recorded to find the units
    assert all(count > 0 for count in opt.reset_counts.values())
    assert torch._C._len_torch_function_stack() == 0  # the recording left no mode behind


class Module(nn.Module):
    """A LightningModule-like module: its training step calls a submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    def training_step(self, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(self.net(x), y)


@pytest.mark.parametrize("closure", [True, False], ids=["step-with-closure", "plain-step"])
def test_a_submodule_called_from_a_training_step_is_found(closure: bool) -> None:
    torch.manual_seed(0)
    module = Module()
    opt = GXDReset(torch.optim.SGD(module.parameters(), lr=0.1), module, maturity=2)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)

        def step_closure(x: Tensor = x, y: Tensor = y) -> Tensor:
            opt.zero_grad()
            loss = module.training_step(x, y)
            loss.backward()
            return loss

        if closure:
            opt.step(step_closure)
        else:
            step_closure()
            opt.step()
    assert list(opt.layers) == ["net.0"] and opt.skipped["net.2"] == OUTPUT
    assert opt.steps == 5


def test_layers_called_from_inline_functional_code_are_found() -> None:
    class Layers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(5, 8), nn.Linear(8, 2)

    model = Layers()
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
    for _ in range(3):
        opt.zero_grad()
        model.fc2(F.relu(model.fc1(torch.randn(4, 5)))).pow(2).sum().backward()
        opt.step()
    assert list(opt.layers) == ["fc1"] and opt.layers["fc1"].consumers == ("fc2",)
    assert opt.skipped["fc2"] == OUTPUT


def test_a_backward_through_torch_autograd_is_analysed_at_the_step() -> None:
    module = Module()
    opt = GXDReset(torch.optim.SGD(module.parameters(), lr=0.1), module)
    loss = module.training_step(torch.randn(8, 6), torch.randint(0, 3, (8,)))
    grads = torch.autograd.grad(loss, list(module.parameters()))
    for param, grad in zip(module.parameters(), grads, strict=True):
        param.grad = grad
    opt.step()  # the recording saw no backward call: its graph is read here
    assert list(opt.layers) == ["net.0"]
    assert torch._C._len_torch_function_stack() == 0


def test_an_acting_pass_without_gradients_records_nothing() -> None:
    policy = Policy()
    opt = GXDReset(torch.optim.Adam(policy.parameters()), policy)
    with torch.no_grad():
        policy.evaluate_actions(torch.randn(4, 4), torch.zeros(4, dtype=torch.long))
    policy.eval()
    policy.evaluate_actions(torch.randn(4, 4), torch.zeros(4, dtype=torch.long))
    assert opt._binding._lazy is not None and opt._binding._lazy.recorder is None
    assert torch._C._len_torch_function_stack() == 0
    with pytest.raises(RuntimeError, match="first training pass"):
        _ = opt.layers
