"""Unit tests of `GXDReset` on your own model: copy this file into your test suite and adapt it.

Run it with ``pytest examples/test_my_model.py`` (needs ``pytest`` and ``hypothesis``). ``MyModel``
stands for your architecture: a convolutional stem, a residual block and an MLP head, so that some
layers are eligible and some are skipped.
"""

# --8<-- [start:model]
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from gxd_optim import GXDReset
from gxd_optim.testing import assert_first_order, assert_reset_invariants, describe
from gxd_optim.testing import strategies as gst


class MyModel(nn.Module):
    """A conv stem, a residual block and an MLP head, for 1×8×8 images."""

    def __init__(self, channels: int = 8, hidden: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.block = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * 4 * 4, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.stem(x))
        x = x + self.block(x)  # a residual add: it mixes the stem's units with the block's
        x = nn.functional.avg_pool2d(x, 2)
        return self.head(x)


# --8<-- [end:model]


# --8<-- [start:describe]
def test_the_layers_i_expect_are_eligible() -> None:
    model, x = MyModel(), torch.randn(2, 1, 8, 8)
    print(describe(model, x))  # `pytest -s` shows the table

    opt = GXDReset(torch.optim.Adam(model.parameters()), model)
    opt.discover(x)
    assert set(opt.layers) == {"block.0", "head.1"}
    assert set(opt.skipped) == {"stem", "block.3", "head.3"}


# --8<-- [end:describe]


# --8<-- [start:first_order]
def test_resets_cost_what_gxd_predicts() -> None:
    torch.manual_seed(0)
    model, x, labels = MyModel(), torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    assert_first_order(model, x, lambda out: nn.functional.cross_entropy(out, labels))


# --8<-- [end:first_order]


# --8<-- [start:fuzz]
@settings(max_examples=10, deadline=None)
@given(
    gst.cases(
        MyModel,
        input_shape=(1, 8, 8),
        channels=st.integers(1, 6),
        hidden=st.integers(1, 12),
        classes=st.integers(1, 4),
    )
)
def test_first_order_holds_for_every_size(case: gst.Case) -> None:
    model, x, _ = case
    assert_first_order(model, x, lambda out: out.logsumexp(-1).mean())


# --8<-- [end:fuzz]


# --8<-- [start:invariants]
def test_a_reset_touches_only_its_units() -> None:
    model = MyModel()
    opt = GXDReset(torch.optim.AdamW(model.parameters(), lr=1e-3), model)
    for _ in range(3):  # a few steps, so that the optimizer has state to clear
        opt.zero_grad()
        model(torch.randn(8, 1, 8, 8)).logsumexp(-1).mean().backward()
        opt.step()
    for name, info in opt.layers.items():
        assert_reset_invariants(opt, name, [0, info.num_units - 1])


# --8<-- [end:invariants]
