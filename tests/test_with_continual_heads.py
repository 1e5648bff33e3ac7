"""A continual-learning loop that changes its model between tasks (plain torch: Avalanche
needs a torchvision wheel that does not import next to the CPU build of torch).

The classifier grows or is replaced at every task, as Avalanche's ``IncrementalClassifier``
and multi-task protocols do, and a layer is frozen half-way: the wrapper finds the units
again, keeps what did not change, and never writes a replaced head or a frozen layer.
"""

from __future__ import annotations

import continual_heads as example  # examples/, on the path from conftest
import pytest
import torch
from torch import Tensor, nn

from gxd_optim import GXDReset


@pytest.mark.parametrize("grow", [True, False], ids=["grown-classifier", "new-head"])
def test_the_wrapper_follows_the_heads_and_never_writes_a_replaced_one(grow: bool) -> None:
    torch.manual_seed(0)
    model = example.Learner()
    opt = GXDReset(
        torch.optim.Adam(model.parameters(), lr=1e-3), model, replacement_rate=0.01, maturity=5
    )
    live_head_zeroed: list[bool] = []
    opt.register_reset_hook(
        lambda name, index: live_head_zeroed.append(
            name != "body.2" or bool((model.head.weight[:, index] == 0).all())
        )
    )
    replaced: list[tuple[nn.Linear, Tensor]] = []
    for task in range(3):
        classes = 2 * (task + 1)
        if task:
            replaced.append((model.head, model.head.weight.detach().clone()))
            model.head = example.grown(model.head, classes) if grow else nn.Linear(64, classes)
            opt.optimizer.param_groups[0]["params"] = list(model.parameters())
            opt.optimizer.state.clear()
        for step in range(40):
            x, y = example.task_data(task, classes)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if task and step == 1:  # the change was noticed at step 0, the units found again
                assert opt.layers["body.2"].consumers == ("head",)
                ages = opt.tracker.layers  # type: ignore[union-attr]
                assert int(ages["body.0"].age.max()) > 40  # unchanged: its statistics kept
                assert int(ages["body.2"].age.max()) == 1  # its consumer changed: fresh
    assert opt.steps == 3 * 40 - 2  # the steps that noticed a change committed nothing
    assert all(live_head_zeroed) and len(live_head_zeroed) > 10
    for head, weight in replaced:
        assert torch.equal(head.weight, weight)  # never written after it was replaced


def test_a_layer_frozen_during_training_is_never_written() -> None:
    torch.manual_seed(0)
    model = example.Learner()
    opt = GXDReset(
        torch.optim.Adam(model.parameters(), lr=1e-3), model, replacement_rate=0.05, maturity=2
    )

    def train(steps: int) -> None:
        for _ in range(steps):
            x, y = example.task_data(0, 2)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    train(10)
    assert opt.reset_counts["body.2"] > 0
    model.body[2].requires_grad_(False)  # frozen, still in the optimizer
    frozen = model.body[2].weight.detach().clone()
    with pytest.warns(UserWarning, match="no layer's units can be reset"):
        train(20)
    assert torch.equal(model.body[2].weight, frozen)
    assert opt.skipped["body.2"] == "frozen (its weight has requires_grad=False)"
    assert opt.skipped["body.0"] == (
        "its consumer `body.2` is frozen (its weight has requires_grad=False)"
    )


def test_the_loop_of_the_page_runs(capsys: pytest.CaptureFixture[str]) -> None:
    model, opt = example.train(tasks=3, grow=True)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["task 0", "task 1", "task 2"]
    assert model.head.out_features == 6 and opt.layers["body.2"].consumers == ("head",)
    assert all(count > 0 for count in opt.reset_counts.values())
