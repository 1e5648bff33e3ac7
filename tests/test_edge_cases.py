"""Training patterns that broke earlier versions: each test pins one of them down."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune
from torch import Tensor, nn

from gxd_optim import GXDReset
from gxd_optim.testing.models import MLP, MLPSpec

X = torch.randn(16, 4, generator=torch.Generator().manual_seed(3))


def _pair() -> tuple[MLP, GXDReset, MLP, GXDReset]:
    model = MLP(MLPSpec(4, (6, 5), 2))
    twin = copy.deepcopy(model)
    wrap = dict(replacement_rate=0.0)
    return (
        model,
        GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, **wrap),  # type: ignore[arg-type]
        twin,
        GXDReset(torch.optim.SGD(twin.parameters(), lr=0.1), twin, **wrap),  # type: ignore[arg-type]
    )


def test_a_second_backward_through_one_forward_is_not_counted_twice() -> None:
    model, opt, twin, reference = _pair()
    out = model(X)
    out.pow(2).mean().backward(retain_graph=True)
    out.abs().mean().backward()
    opt.step()
    twin(X).pow(2).mean().backward()
    reference.step()
    torch.testing.assert_close(opt.utilities(), reference.utilities())


def test_a_stray_consumer_call_on_another_batch_is_ignored() -> None:
    model, opt, twin, reference = _pair()
    loss = model(X).pow(2).mean()
    model.hidden[1](torch.randn(3, 6, requires_grad=True)).sum().backward()
    loss.backward()
    opt.step()
    twin(X).pow(2).mean().backward()
    reference.step()
    torch.testing.assert_close(opt.utilities(), reference.utilities())


def test_copying_the_wrapper_keeps_the_originals_pending_statistics() -> None:
    model, opt, twin, reference = _pair()
    model(X).pow(2).mean().backward()
    copy.deepcopy(opt)
    pickle.dumps(opt)
    opt.step()
    twin(X).pow(2).mean().backward()
    reference.step()
    torch.testing.assert_close(opt.utilities(), reference.utilities())


def test_model_pickles_and_copies_before_the_first_forward() -> None:
    model = MLP(MLPSpec(4, (6,), 2))
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
    pickle.dumps(model)
    pickle.dumps(opt)
    copy.deepcopy(model)(X).sum().backward()  # the copy's forward must not discover for opt
    with pytest.raises(RuntimeError, match="first"):
        _ = opt.layers


def test_pruned_consumers_and_parametrized_explicit_producers_are_refused() -> None:
    model = MLP(MLPSpec(4, (6, 5, 3), 2))
    nn.utils.prune.l1_unstructured(model.hidden[1], "weight", amount=0.5)
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
    opt.discover(X)
    assert "not a Parameter" in opt.skipped["hidden.0"]
    other = MLP(MLPSpec(4, (6, 5), 2))
    nn.utils.parametrizations.weight_norm(other.hidden[0])
    with pytest.raises(ValueError, match="parametrized"):
        GXDReset(
            torch.optim.SGD(other.parameters(), lr=0.1), other, layers={"hidden.0": ["hidden.1"]}
        )


def test_frozen_consumers_make_their_producer_ineligible() -> None:
    model = MLP(MLPSpec(4, (6, 5, 3), 2))
    model.hidden[1].requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = GXDReset(torch.optim.SGD(params, lr=0.1), model)
    opt.discover(X)
    assert opt.skipped["hidden.0"] == (
        "its consumer `hidden.1` is frozen (its weight has requires_grad=False)"
    )


class TwoHeads(nn.Module):
    """A multi-head continual learner: one head per task, one called per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.heads = nn.ModuleList([nn.Linear(6, 2), nn.Linear(6, 2)])

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        return self.heads[task](F.relu(self.body(x)))


def test_a_layer_first_called_after_discovery_warns() -> None:
    model = TwoHeads()
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
    model(X, task=0).sum().backward()
    assert opt.skipped["heads.1"] == "not called in the forward pass"
    with pytest.warns(UserWarning, match="heads.1.*not called when the units were discovered"):
        model(X, task=1).sum().backward()
    opt.close()
    explicit = GXDReset(
        torch.optim.SGD(model.parameters(), lr=0.1), model, layers={"body": ["heads.0", "heads.1"]}
    )
    explicit.zero_grad()
    model(X, task=1).sum().backward()
    explicit.predicted_cost("body")  # heads.0 got no gradient: it contributes nothing


def test_checkpoint_layers_are_checked_against_exclude_and_reference() -> None:
    model = MLP(MLPSpec(4, (6, 5), 2))
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
    model(X).sum().backward()
    opt.step()
    saved = opt.state_dict()
    excluding = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, exclude=["hidden.0"])
    with pytest.raises(ValueError, match="excludes"):
        excluding.load_state_dict(saved)
    zero = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, reference="zero")
    with pytest.raises(ValueError, match="reference"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zero.load_state_dict(saved)


def test_predicted_cost_is_detached_and_refuses_stale_gradients() -> None:
    model, opt, _, _ = _pair()
    model(X).pow(2).mean().backward()
    cost = opt.predicted_cost("hidden.0")
    assert not cost.requires_grad
    opt.step()
    with pytest.raises(RuntimeError, match="changed since the last backward"):
        opt.predicted_cost("hidden.0")
    opt.zero_grad()
    with pytest.raises(RuntimeError, match="after backward"):
        opt.predicted_cost("hidden.0")


def test_predicted_cost_refuses_consumer_weights_replaced_by_assign() -> None:
    """After ``load_state_dict(assign=True)`` the inner optimizer holds parameters the model no
    longer uses: the wrapper notices the new parameters and says so, instead of judging the new
    weights' gradients by the versions of the old ones."""
    model, opt, _, _ = _pair()
    model(X).pow(2).mean().backward()
    opt.step()
    consumer = model.get_submodule(opt.layers["hidden.0"].consumers[0])
    old = consumer.weight
    model.load_state_dict(copy.deepcopy(model.state_dict()), assign=True)
    assert consumer.weight is not old
    model(X).pow(2).mean().backward()
    with pytest.raises(RuntimeError, match="the model changed"):
        opt.predicted_cost("hidden.0")


def test_explicit_layers_reject_shared_consumers_and_unmappable_columns() -> None:
    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 3)
            self.b = nn.Linear(4, 3)
            self.c = nn.Linear(6, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.c(torch.cat([self.a(x), self.b(x)], 1))

    model = Cat()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="must feed it alone"):
        GXDReset(sgd, model, layers={"a": ["c"]})


def test_explicit_layers_reject_a_consumer_claimed_twice() -> None:
    model = MLP(MLPSpec(4, (6, 6, 6), 2))
    with pytest.raises(ValueError, match="consumer of both"):
        GXDReset(
            torch.optim.SGD(model.parameters(), lr=0.1),
            model,
            layers={"hidden.0": ["hidden.2"], "hidden.1": ["hidden.2"]},
        )
    with pytest.raises(ValueError, match="its own consumer"):
        GXDReset(
            torch.optim.SGD(model.parameters(), lr=0.1),
            model,
            layers={"hidden.1": ["hidden.1"]},
        )


def test_a_tensor_forward_does_not_return_makes_its_producer_ineligible() -> None:
    class Aux(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(4, 6)
            self.fc2 = nn.Linear(6, 6)
            self.fc3 = nn.Linear(6, 1)

        def forward(self, x: Tensor) -> Tensor:
            h = F.relu(self.fc1(x))
            g = F.relu(self.fc2(h))
            self.features = g.clone()  # kept for an auxiliary loss computed outside forward()
            return self.fc3(g)

    model = Aux()
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
    opt.discover(X)
    assert "does not return" in opt.skipped["fc2"]
    assert opt.layers["fc1"].consumers == ("fc2",)


def test_non_finite_statistics_are_not_committed() -> None:
    model, opt, _, _ = _pair()
    model(X).pow(2).mean().backward()
    opt.step()
    before = {k: v.clone() for k, v in opt.utilities().items()}
    (model(X).pow(2).mean() * float("inf")).backward()
    model.zero_grad()  # not opt.zero_grad(): the non-finite statistics stay pending
    opt.step()
    for name, value in opt.utilities().items():
        torch.testing.assert_close(value, before[name])  # the non-finite step left no trace


def test_reset_units_with_no_indices_is_a_no_op() -> None:
    model, opt, _, _ = _pair()
    model(X).sum().backward()
    opt.step()
    state = copy.deepcopy(model.state_dict())
    opt.reset_units("hidden.0", [])
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert opt.reset_counts["hidden.0"] == 0
