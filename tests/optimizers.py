"""One registry of optimizers for contract tests, in the manner of torch's ``OptimizerInfo``.

`REGISTRY` holds every optimizer of ``torch.optim`` (the variants whose state or code path
differs: momentum, Nesterov, AMSGrad, centered, foreach, fused) and three of the third-party
package ``pytorch-optimizer``. Each entry says what it needs (a closure, sparse gradients, only
2-D parameters) so a test can skip precisely, and classifies every per-element state tensor
(one shaped like its parameter) by what a reset must do with it (`StateKind`).

`OPTIMIZERS` is the name → factory view of the entries that any model can use with a plain
``step()``; `tests/test_contract.py` and `tests/test_invariants.py` draw from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import pytorch_optimizer
import torch

Factory = Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]

StateKind = Literal["first", "scale", "param"]
"""What a reset must write into the touched slices of a per-element state tensor.

- ``"first"``: a signed statistic of the gradient (momentum, first moment, previous gradient):
  zeroed under both state policies.
- ``"scale"``: a non-negative scale statistic (second moment, accumulated squares, adaptive
  step size): zeroed under ``"zero"``; under ``"mean_scale"`` refilled with the mean of the
  untouched entries, so the new unit takes steps of the layer's usual size.
- ``"param"``: a copy or running average of the parameter itself (ASGD's ``ax``): set to the
  parameter's new value under both policies; an average of the old unit's weights (or zeros)
  describes no unit the model has.
"""


@dataclass(frozen=True)
class OptimizerInfo:
    """One optimizer configuration and what the contract tests must know about it.

    Attributes:
        name: the test id.
        make: builds the optimizer over the given parameters.
        state: every per-element state key the optimizer keeps, with its `StateKind`.
        closure: ``step`` needs a closure (LBFGS).
        sparse_only: takes only sparse gradients (SparseAdam), which Linear and Conv layers
            never produce: no unit of theirs can be in it.
        matrices_only: takes only 2-D parameters (Muon): bias-free Linear layers, no Conv,
            no BatchNorm.
        state_gaps: state policy → why ``gxd_optim.operator`` clears this optimizer's state
            wrongly today (the state-slice test is a strict xfail under that policy).
    """

    name: str
    make: Factory
    state: Mapping[str, StateKind] = field(default_factory=dict)
    closure: bool = False
    sparse_only: bool = False
    matrices_only: bool = False
    state_gaps: Mapping[str, str] = field(default_factory=dict)


ADAM: Mapping[str, StateKind] = {"exp_avg": "first", "exp_avg_sq": "scale"}
AMSGRAD: Mapping[str, StateKind] = {**ADAM, "max_exp_avg_sq": "scale"}
MOMENTUM: Mapping[str, StateKind] = {"momentum_buffer": "first"}

REGISTRY: tuple[OptimizerInfo, ...] = (
    OptimizerInfo("sgd", lambda p: torch.optim.SGD(p, lr=0.05)),
    OptimizerInfo("sgd_momentum", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), MOMENTUM),
    OptimizerInfo(
        "sgd_nesterov_foreach",
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, foreach=True),
        MOMENTUM,
    ),
    OptimizerInfo(
        "sgd_momentum_no_foreach",
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, foreach=False),
        MOMENTUM,
    ),
    OptimizerInfo(
        "sgd_momentum_fused",
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, fused=True),
        MOMENTUM,
    ),
    OptimizerInfo("adam", lambda p: torch.optim.Adam(p, lr=1e-2), ADAM),
    OptimizerInfo("adam_foreach", lambda p: torch.optim.Adam(p, lr=1e-2, foreach=True), ADAM),
    OptimizerInfo("adam_no_foreach", lambda p: torch.optim.Adam(p, lr=1e-2, foreach=False), ADAM),
    OptimizerInfo("adam_fused", lambda p: torch.optim.Adam(p, lr=1e-2, fused=True), ADAM),
    OptimizerInfo("amsgrad", lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True), AMSGRAD),
    OptimizerInfo("adamw", lambda p: torch.optim.AdamW(p, lr=1e-2), ADAM),
    OptimizerInfo(
        "adamw_amsgrad_foreach",
        lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True, foreach=True),
        AMSGRAD,
    ),
    OptimizerInfo(
        "adadelta",
        lambda p: torch.optim.Adadelta(p, lr=1.0),
        {"square_avg": "scale", "acc_delta": "scale"},
    ),
    OptimizerInfo("adagrad", lambda p: torch.optim.Adagrad(p, lr=0.05), {"sum": "scale"}),
    OptimizerInfo(
        "adamax", lambda p: torch.optim.Adamax(p, lr=1e-2), {"exp_avg": "first", "exp_inf": "scale"}
    ),
    OptimizerInfo(
        "asgd",
        lambda p: torch.optim.ASGD(p, lr=0.05, t0=2),  # averages from step 2 on
        {"ax": "param"},
    ),
    OptimizerInfo("nadam", lambda p: torch.optim.NAdam(p, lr=1e-2), ADAM),
    OptimizerInfo("radam", lambda p: torch.optim.RAdam(p, lr=1e-2), ADAM),
    OptimizerInfo(
        "rmsprop",
        lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5, centered=True),
        {"square_avg": "scale", "momentum_buffer": "first", "grad_avg": "first"},
    ),
    OptimizerInfo(
        "rmsprop_plain", lambda p: torch.optim.RMSprop(p, lr=1e-3), {"square_avg": "scale"}
    ),
    OptimizerInfo(
        "rprop",
        lambda p: torch.optim.Rprop(p, lr=1e-2),
        {"prev": "first", "step_size": "scale"},
    ),
    OptimizerInfo(
        "lbfgs",  # its state is one flat history for all parameters: nothing per element
        lambda p: torch.optim.LBFGS(p, lr=0.5, max_iter=2, history_size=4),
        closure=True,
    ),
    OptimizerInfo("sparse_adam", lambda p: torch.optim.SparseAdam(p, lr=1e-2), sparse_only=True),
    OptimizerInfo(
        "adafactor",  # 2-D and up: factored row_var/col_var (not per element); 1-D: variance
        lambda p: torch.optim.Adafactor(p, lr=1e-2),
        {"variance": "scale"},
    ),
    OptimizerInfo("muon", lambda p: torch.optim.Muon(p, lr=0.02), MOMENTUM, matrices_only=True),
    OptimizerInfo("lion", lambda p: pytorch_optimizer.Lion(p, lr=1e-3), {"exp_avg": "first"}),
    OptimizerInfo(
        "adan",
        lambda p: pytorch_optimizer.Adan(p, lr=1e-2),
        {**ADAM, "exp_avg_diff": "first", "previous_grad": "first"},
    ),
    OptimizerInfo(
        "adabelief",
        lambda p: pytorch_optimizer.AdaBelief(p, lr=1e-2),
        {"exp_avg": "first", "exp_avg_var": "scale"},
    ),
)

BY_NAME: Mapping[str, OptimizerInfo] = {info.name: info for info in REGISTRY}

OPTIMIZERS: dict[str, Factory] = {
    info.name: info.make
    for info in REGISTRY
    if not (info.closure or info.sparse_only or info.matrices_only)
}
"""The entries any model can use with a plain ``step()``, by name."""
