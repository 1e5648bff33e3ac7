"""Discovery on every supported pattern, and on the skipped ones with their reasons."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gxd_optim import GXDReset
from gxd_optim.testing.models import CNN, MLP, CNNSpec, MLPSpec


def _discovered(model: nn.Module, x: Tensor, **kwargs: object) -> GXDReset:
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, **kwargs)  # type: ignore[arg-type]
    opt.discover(x)
    return opt


def _edges(opt: GXDReset) -> dict[str, list[tuple[str, int, str]]]:
    return {
        name: [(e.consumer, e.columns_per_unit, e.reference) for e in info.edges]
        for name, info in opt.layers.items()
    }


@pytest.mark.parametrize("act", ["relu", "relu_inplace", "functional_relu", "gelu", "tanh"])
def test_mlp_chain(act: str) -> None:
    model = MLP(MLPSpec(3, (5, 4), 2, act=act, norm=True))
    opt = _discovered(model, torch.randn(6, 3))
    assert _edges(opt) == {
        "hidden.0": [("hidden.1", 1, "mean")],
        "hidden.1": [("head", 1, "mean")],
    }
    assert opt.layers["hidden.0"].num_units == 5
    assert opt.layers["hidden.0"].norms == ("norms.0",)
    assert opt.skipped == {"head": "its units are part of the model's output"}


def test_cnn_with_pool_flatten_maps_columns_and_padding_forces_zero_reference() -> None:
    model = CNN(CNNSpec(2, (4, 3), 8, 2, norm=True, padding=1, pool="max", hidden=5))
    opt = _discovered(model, torch.randn(3, 2, 8, 8))
    edges = _edges(opt)
    # 8 -> conv(pad 1) 8 -> pool 4 -> conv 4 -> pool 2: 3 channels x 2 x 2 into fc
    assert edges["convs.0"] == [("convs.1", 1, "zero")]
    assert edges["convs.1"] == [("fc", 4, "mean")]
    assert edges["fc"] == [("head", 1, "mean")]
    assert "zero-padded" in opt.layers["convs.0"].edges[0].note
    assert opt.layers["convs.1"].norms == ("norms.1",)


def test_adaptive_pool_and_consumer_without_bias() -> None:
    model = CNN(CNNSpec(1, (3, 2), 8, 2, pool="adaptive", bias=False))
    opt = _discovered(model, torch.randn(2, 1, 8, 8))
    assert _edges(opt)["convs.0"] == [("convs.1", 1, "zero")]
    assert "no bias" in opt.layers["convs.0"].edges[0].note
    assert _edges(opt)["convs.1"] == [("head", 1, "mean")]


def test_user_reference_zero_applies_everywhere() -> None:
    opt = _discovered(MLP(MLPSpec(3, (4,), 2)), torch.randn(5, 3), reference="zero")
    assert _edges(opt) == {"hidden.0": [("head", 1, "zero")]}
    assert opt.layers["hidden.0"].edges[0].note == ""


class Reordered(nn.Module):
    """Registration order differs from data flow; functional calls; one unit, two consumers."""

    def __init__(self) -> None:
        super().__init__()
        self.out_b = nn.Linear(6, 1)
        self.out_a = nn.Linear(6, 2)
        self.mid = nn.Linear(4, 6)
        self.first = nn.Conv1d(2, 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.flatten(F.adaptive_max_pool1d(F.silu(self.first(x)), 1), 1)
        h = F.dropout(F.relu(self.mid(h)), 0.1, self.training)
        return torch.cat([self.out_a(h), self.out_b(h)], 1)


def test_registration_order_functional_calls_and_shared_units() -> None:
    opt = _discovered(Reordered(), torch.randn(3, 2, 7))
    edges = _edges(opt)
    assert edges["first"] == [("mid", 1, "mean")]
    assert sorted(edges["mid"]) == [("out_a", 1, "mean"), ("out_b", 1, "mean")]
    assert set(opt.skipped) == {"out_a", "out_b"}


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.f1 = nn.Linear(4, 8)
        self.f2 = nn.Linear(8, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        h = h + self.f2(F.relu(self.f1(h)))
        return self.head(self.norm(h))


def test_residual_block_inner_layer_kept_others_skipped_with_reason() -> None:
    opt = _discovered(Residual(), torch.randn(5, 3))
    assert _edges(opt) == {"f1": [("f2", 1, "mean")]}
    assert "residual" in opt.skipped["inp"]
    assert "residual" in opt.skipped["f2"]
    assert "output" in opt.skipped["head"]


class Mixers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(3, 4)
        self.c = nn.Linear(3, 4)
        self.ln = nn.LayerNorm(4)
        self.after_cat = nn.Linear(8, 2)
        self.after_ln = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        cat = self.after_cat(torch.cat([self.a(x), self.b(x)], 1))
        return cat + self.after_ln(self.ln(self.c(x)))


def test_concatenation_and_layernorm_are_skipped() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), Mixers(), nn.ReLU(), nn.Linear(2, 1))
    opt = _discovered(model, torch.randn(5, 3))
    assert sorted(opt.layers["0"].consumers) == ["2.a", "2.b", "2.c"]
    assert "concatenation" in opt.skipped["2.a"] and "concatenation" in opt.skipped["2.b"]
    assert "LayerNorm" in opt.skipped["2.c"]
    assert "residual" in opt.skipped["2.after_cat"]


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(4, 4)
        self.k = nn.Linear(4, 4)
        self.v = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        att = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2), -1)
        return self.out(att @ self.v(x))


def test_attention_projections_are_skipped() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), Attention())
    opt = _discovered(model, torch.randn(2, 5, 3))
    assert sorted(opt.layers["0"].consumers) == ["2.k", "2.q", "2.v"]  # read per unit: fine
    assert {"2.q", "2.k", "2.v", "2.out"} == set(opt.skipped)
    assert "transpose" in opt.skipped["2.k"]


def test_exclude_skips_the_layer_and_its_producers() -> None:
    model = MLP(MLPSpec(3, (5, 4, 3), 2))
    opt = _discovered(model, torch.randn(6, 3), exclude=["hidden.1"])
    assert opt.skipped["hidden.1"] == "excluded by the user (exclude=)"
    assert "its consumer `hidden.1` is excluded" in opt.skipped["hidden.0"]
    assert set(opt.layers) == {"hidden.2"}


def test_explicit_layers_need_no_forward() -> None:
    model = CNN(CNNSpec(1, (3,), 6, 2, pool="none"))  # conv 6 -> 4: 3 x 4 x 4 into head
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, layers={"convs.0": ["head"]})
    assert _edges(opt) == {"convs.0": [("head", 16, "mean")]}


def test_layers_before_discovery_raise_a_clear_error() -> None:
    model = MLP(MLPSpec(3, (4,), 2))
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
    with pytest.raises(RuntimeError, match="first"):
        _ = opt.layers
    model(torch.randn(2, 3)).sum().backward()
    assert set(opt.layers) == {"hidden.0"}


def test_discovery_forward_leaves_no_trace() -> None:
    model = MLP(MLPSpec(3, (4,), 2, norm=True))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 3)
    rng = torch.get_rng_state()
    _discovered(model, x)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_no_eligible_layer_is_a_clear_error_naming_each_reason() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
    with pytest.raises(ValueError, match=r"no layer whose units.*\n  0: its units are part"):
        opt.discover(torch.randn(2, 3))


def test_a_second_wrapper_on_the_same_parameters_is_refused_until_the_first_is_closed() -> None:
    model = MLP(MLPSpec(3, (4,), 2))
    first = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
    second = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
    with pytest.raises(ValueError, match=r"another GXDReset already resets \['head.weight'"):
        model(torch.randn(2, 3)).sum().backward()  # the first discovers, the second may not
    assert set(first.layers) == {"hidden.0"}
    with pytest.raises(RuntimeError, match="first training pass"):
        _ = second.layers
    first.close()
    second.discover(torch.randn(2, 3))
    assert set(second.layers) == {"hidden.0"}


def test_two_wrappers_over_other_parameters_of_one_model_both_work() -> None:
    class ActorCritic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.actor = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
            self.critic = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 1))

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            return self.actor(x), self.critic(x)

    model = ActorCritic()
    actor = GXDReset(torch.optim.SGD(model.actor.parameters(), lr=0.1), model)
    critic = GXDReset(torch.optim.SGD(model.critic.parameters(), lr=0.1), model)
    policy, value = model(torch.randn(2, 3))
    (policy.sum() + value.sum()).backward()
    actor.step()
    critic.step()
    assert set(actor.layers) == {"actor.0"} and set(critic.layers) == {"critic.0"}
    assert actor.skipped["critic.0"] == "not in the optimizer"
    assert actor.steps == critic.steps == 1


def test_weight_sharing_and_frozen_layers_are_skipped() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.frozen = nn.Linear(3, 3)
            self.b = nn.Linear(3, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(F.relu(self.frozen(F.relu(self.a(F.relu(self.a(x)))))))

    model = Shared()
    model.frozen.requires_grad_(False)
    trained = [*model.a.parameters(), *model.b.parameters()]
    opt = GXDReset(torch.optim.SGD(trained, lr=0.1), model, layers=None)
    with pytest.raises(ValueError) as info:
        opt.discover(torch.randn(2, 3))
    assert "a: called 2 times per forward pass (shared weights)" in str(info.value)
    assert "frozen: frozen (its weight has requires_grad=False)" in str(info.value)


def test_one_dimensional_pooling_is_followed() -> None:
    class Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv1d(2, 4, 3)
            self.c2 = nn.Conv1d(4, 3, 2)
            self.head = nn.Linear(3, 1)

        def forward(self, x: Tensor) -> Tensor:
            x = F.avg_pool1d(F.relu(self.c2(F.max_pool1d(F.relu(self.c1(x)), 2))), 2)
            return self.head(F.adaptive_avg_pool1d(x, 1).flatten(1))

    opt = _discovered(Seq(), torch.randn(2, 2, 14))
    assert _edges(opt) == {"c1": [("c2", 1, "mean")], "c2": [("head", 1, "mean")]}


def test_subclasses_count_when_they_compute_what_their_class_does() -> None:
    class Plain(nn.Linear):
        pass

    class Casting(nn.Linear):  # timm's Linear: casts the weight to the input's dtype
        def forward(self, x: Tensor) -> Tensor:
            return F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))

    class Standardised(nn.Linear):  # weight standardisation: a zeroed column moves the rest
        def forward(self, x: Tensor) -> Tensor:
            w = self.weight
            return F.linear(x, (w - w.mean(1, keepdim=True)) / w.std(1, keepdim=True), self.bias)

    model = nn.Sequential(
        Plain(3, 4), nn.ReLU(), Casting(4, 4), nn.ReLU(), Standardised(4, 4), nn.ReLU(),
        nn.Linear(4, 1),
    )  # fmt: skip
    opt = _discovered(model, torch.randn(2, 3))
    assert set(opt.layers) == {"0"} and opt.layers["0"].consumers == ("2",)
    assert "a subclass of Linear whose forward computes something else" in opt.skipped["4"]
    assert "its consumer `4` is a subclass of Linear" in opt.skipped["2"]


def test_describe_lists_layers_and_reasons_and_leaves_the_model_alone() -> None:
    from gxd_optim.testing import describe

    model = CNN(CNNSpec(2, (4, 3), 8, 2, norm=True, padding=1, pool="max", hidden=5))
    hooks = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    text = describe(model, torch.randn(3, 2, 8, 8))
    assert "convs.0  4 units  -> convs.1 (zero: zero-padded convolution" in text
    assert "convs.1  3 units  -> fc (mean, 4 columns/unit)" in text
    assert "BatchNorm norms.1" in text
    assert "head  its units are part of the model's output" in text
    assert hooks == [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
