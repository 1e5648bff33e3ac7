"""Units of the architectures trained today: transformers' Conv1D, gated MLPs (SwiGLU, GeGLU),
grouped and depthwise convolutions, BatchNorm after a consumer without bias, in-place dropout,
layer scales, permutations and padding. Each pattern: what discovery finds, the first-order
property (hypothesis over seeds and unit sets) and the exact-reset invariants."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from gxd_optim import GXDReset
from gxd_optim.checkpoint import layers_from_dict, layers_to_dict
from gxd_optim.discovery import PADDED
from gxd_optim.testing import assert_first_order, assert_reset_invariants


class Conv1D(nn.Module):
    """transformers' Conv1D, as it is written there: a Linear with the weight ``[in, out]``."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        size_out = (*x.size()[:-1], self.nf)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


def new_gelu(x: Tensor) -> Tensor:
    """GPT-2's tanh approximation: the units meet themselves in a sum and a product."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3.0))))


class GPT2MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_fc, self.c_proj = Conv1D(12, 5), Conv1D(3, 12)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(new_gelu(self.c_fc(x))).mean(1)


class Gated(nn.Module):
    """``down(act(gate(x)) * up(x))``: SwiGLU with SiLU, GeGLU with GELU."""

    def __init__(self, act: Callable[[Tensor], Tensor], bias: bool) -> None:
        super().__init__()
        self.act = act
        self.gate, self.up = nn.Linear(5, 8, bias=bias), nn.Linear(5, 8, bias=bias)
        self.down = nn.Linear(8, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x)).mean(1)


class Grouped(nn.Module):
    """A 1x1 producer read by a depthwise convolution, then by a grouped one."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(2, 6, 1)
        self.depthwise = nn.Conv2d(6, 6, 3, groups=6)
        self.grouped = nn.Conv2d(6, 4, 1, groups=2)
        self.head = nn.Linear(4 * 4 * 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.depthwise(F.relu(self.expand(x))))
        return self.head(F.relu(self.grouped(h)).flatten(1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand, depthwise (padded), project; no conv has a bias."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 8, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.project = nn.Conv2d(8, 3, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self.bn1(self.expand(x)))
        h = F.relu6(self.bn2(self.depthwise(h)))
        return (x + self.bn3(self.project(h))).mean((2, 3))


class Bottleneck(nn.Module):
    """ResNet's bottleneck without its shortcut's projection: 1x1, 3x3, 1x1, no biases."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 6, 1, bias=False), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv3, self.bn3 = nn.Conv2d(6, 4, 1, bias=False), nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return F.relu(x + self.bn3(self.conv3(h))).mean((2, 3))


class ConvNeXtBlock(nn.Module):
    """Depthwise conv, channels-last LayerNorm, pointwise MLP with a layer scale, residual."""

    def __init__(self) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.norm = nn.LayerNorm(4)
        self.pwconv1, self.pwconv2 = nn.Linear(4, 12), nn.Linear(12, 4)
        self.gamma = nn.Parameter(torch.full((4,), 0.5))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        h = self.gamma * self.pwconv2(F.gelu(self.pwconv1(h)))
        return (x + h.permute(0, 3, 1, 2)).mean((2, 3))


class Padded(nn.Module):
    """Padding before the consumer: zeros (TensorFlow's "same") or a reflection."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.a, self.b = nn.Conv2d(2, 5, 1), nn.Conv2d(5, 3, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(F.pad(torch.tanh(self.a(x)), (1, 1, 1, 1), mode=self.mode)).mean((2, 3))


def dropout_net() -> nn.Module:
    """In-place dropout on a flattened view (GELU saves its input: the in-place op is legal)."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.GELU(), nn.Flatten(), nn.Dropout(0.2, inplace=True),
        nn.Linear(4 * 4 * 4, 1),
    )  # fmt: skip


CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "conv1d-newgelu": (GPT2MLP, (6, 4, 5)),
    "swiglu": (lambda: Gated(F.silu, bias=True), (6, 4, 5)),
    "geglu-no-bias": (lambda: Gated(F.gelu, bias=False), (6, 4, 5)),
    "grouped": (Grouped, (4, 2, 6, 6)),
    "inverted-residual": (InvertedResidual, (4, 3, 4, 4)),
    "bottleneck": (Bottleneck, (4, 4, 4, 4)),
    "convnext": (ConvNeXtBlock, (6, 4, 5, 5)),
    "zero-padded": (lambda: Padded("constant"), (6, 2, 5, 5)),
    "reflection-padded": (lambda: Padded("reflect"), (6, 2, 5, 5)),
    "inplace-dropout": (dropout_net, (6, 2, 6, 6)),
}

# What discovery must find: {producer: [(consumer, reference, BatchNorm taking the fold)]}
EXPECTED: dict[str, dict[str, list[tuple[str, str, str]]]] = {
    "conv1d-newgelu": {"c_fc": [("c_proj", "mean", "")]},
    "swiglu": {"gate": [("down", "mean", "")]},
    "geglu-no-bias": {"gate": [("down", "zero", "")]},
    "grouped": {
        "expand": [("depthwise", "mean", "")],
        "depthwise": [("grouped", "mean", "")],
        "grouped": [("head", "mean", "")],
    },
    "inverted-residual": {
        "expand": [("depthwise", "zero", "")],
        "depthwise": [("project", "mean", "bn3")],
    },
    "bottleneck": {"conv1": [("conv2", "zero", "")], "conv2": [("conv3", "mean", "bn3")]},
    "convnext": {"pwconv1": [("pwconv2", "mean", "")]},
    "zero-padded": {"a": [("b", "zero", "")]},
    "reflection-padded": {"a": [("b", "mean", "")]},
    "inplace-dropout": {"0": [("4", "mean", "")]},
}


def _wrapped(case: str, **kwargs: object) -> tuple[nn.Module, GXDReset, Tensor]:
    make, shape = CASES[case]
    model = make().double()
    x = torch.randn(shape, dtype=torch.float64)
    opt = GXDReset(torch.optim.Adam(model.parameters(), lr=1e-2), model, **kwargs)  # type: ignore[arg-type]
    opt.discover(x)
    return model, opt, x


@pytest.mark.parametrize("case", sorted(CASES))
def test_discovery_finds_the_units(case: str) -> None:
    _, opt, _ = _wrapped(case)
    found = {
        name: [(e.consumer, e.reference, e.norm) for e in info.edges]
        for name, info in opt.layers.items()
    }
    assert found == EXPECTED[case], dict(opt.skipped)


@pytest.mark.parametrize("case", sorted(CASES))
@settings(max_examples=max(3, settings.default.max_examples // 3))  # ten patterns, float64 convs
@given(seed=st.integers(0, 2**16), data=st.data())
def test_the_first_order_property_holds(case: str, seed: int, data: st.DataObject) -> None:
    make, shape = CASES[case]
    torch.manual_seed(seed)
    model = make()
    x = torch.randn(shape)
    with torch.no_grad():
        target = torch.randn_like(model(x))
    _, opt, _ = _wrapped(case)
    units = {
        name: [data.draw(st.sets(st.integers(0, info.num_units - 1), min_size=1), label=name)]
        for name, info in opt.layers.items()
    }
    opt.close()
    assert_first_order(model, x, lambda out: (out - target).pow(2).mean(), units=units, seed=seed)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("policy", ["mean_scale", "zero"])
def test_resets_change_exactly_what_they_should(case: str, policy: str) -> None:
    model, opt, x = _wrapped(case, state_policy=policy)
    for _ in range(3):  # optimizer state to clear, running means to fold
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    for name, info in opt.layers.items():
        assert_reset_invariants(opt, name, [0, info.num_units - 1])


def test_a_gated_reset_redraws_both_producers_and_clears_their_state() -> None:
    model, opt, x = _wrapped("swiglu", state_policy="zero")
    assert opt.layers["gate"].partners == ("up",)
    assert "reset with that layer" in opt.skipped["up"]
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    rows = {n: model.get_submodule(n).weight.detach()[2].clone() for n in ("gate", "up")}
    opt.reset_units("gate", [2])
    for name in ("gate", "up"):
        weight = model.get_submodule(name).weight
        assert not torch.equal(weight.detach()[2], rows[name])
        assert bool((opt.state[weight]["exp_avg"][2] == 0).all())
    assert bool((model.down.weight.detach()[:, 2] == 0).all())


def test_a_conv1d_producer_is_redrawn_from_its_own_normal_init() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(400, 3), nn.ReLU(), Conv1D(2, 400))
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
    opt.discover(torch.randn(4, 3))
    opt.reset_units("0", list(range(400)))
    new = model[0].weight.detach()
    assert abs(float(new.std()) - 0.02) < 0.003 and bool((model[0].bias == 0).all())
    assert bool((model[2].weight.detach() == 0).all())  # every input row of the consumer


def test_the_batchnorm_after_a_consumer_takes_the_fold_in_eval_mode() -> None:
    """In eval mode, the block reads a reset unit as its running mean, exactly."""
    model, opt, x = _wrapped("bottleneck")
    for _ in range(5):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    model.eval()
    reference = opt.reset_plan("conv2").consumers[0].reference
    assert reference is not None
    seen: dict[str, Tensor] = {}
    model.conv3.register_forward_pre_hook(lambda m, args: seen.update(h=args[0]))
    with torch.no_grad():
        model(x)
        h = seen["h"]
        pinned = h.clone()  # every unit as the block read it, unit 1 as its running mean
        pinned[:, 1] = reference[1]
        expected = model.bn3(model.conv3(pinned))
    opt.reset_units("conv2", [1])
    with torch.no_grad():
        torch.testing.assert_close(model.bn3(model.conv3(h)), expected)


def test_checkpoints_keep_gates_and_batchnorm_folds() -> None:
    for case in ("swiglu", "bottleneck"):
        _, opt, _ = _wrapped(case)
        assert layers_from_dict(layers_to_dict(opt.layers)) == dict(opt.layers)
    old = {"0": {"num_units": 2, "edges": [["1", 1, "mean", ""]], "norms": [], "path": []}}
    assert layers_from_dict(old)["0"].edges[0].norm == ""  # entries saved before still load


def test_padding_before_a_consumer_says_why_the_reference_is_zero() -> None:
    _, opt, _ = _wrapped("zero-padded")
    assert opt.layers["a"].edges[0].note == PADDED


def test_a_nonzero_constant_pad_mixes_the_units() -> None:
    class Shifted(Padded):
        def forward(self, x: Tensor) -> Tensor:
            return self.b(F.pad(torch.tanh(self.a(x)), (1, 1, 1, 1), value=0.5)).mean((2, 3))

    model = Shifted("constant")
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, layers=None)
    with pytest.raises(ValueError, match="padded with a constant other than 0"):
        opt.discover(torch.randn(2, 2, 5, 5))


def test_a_squeeze_excitation_gate_is_refused_with_a_reason() -> None:
    class SE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.reduce = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 2, 1)
            self.expand, self.project = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 3, 1)

        def forward(self, x: Tensor) -> Tensor:
            h = F.relu(self.conv(x))
            s = torch.sigmoid(self.expand(F.relu(self.reduce(h.mean((2, 3), keepdim=True)))))
            return self.project(h * s).mean((2, 3))

    model = SE()
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
    opt.discover(torch.randn(2, 2, 4, 4))
    assert "squeeze-excitation" in opt.skipped["conv"]
    assert set(opt.layers) == {"reduce"}
