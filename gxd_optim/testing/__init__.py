"""Checks to call from your own test suite before training with `GXDReset`.

- `describe`: what will be reset, what is skipped, and why.
- `assert_first_order`: resetting units changes the loss by their predicted cost, to first order.
- `assert_reset_invariants`: a reset touches exactly the units' slices and keeps every object.
- `gxd_optim.testing.strategies` (needs hypothesis): small models, matching batches and your
  own modules with drawn arguments, to fuzz the checks above.
- `gxd_optim.testing.models`: the small models the strategies draw, built from plain specs.

Examples:
    >>> import torch
    >>> from gxd_optim.testing import assert_first_order
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    >>> assert_first_order(net, torch.randn(8, 3), lambda out: out.pow(2).mean())
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..discovery import Edge, canonical, is_transposed, layer_params, layer_tensors
from ..operator import PARAMETER_KEYS, SECOND_MOMENT_KEYS, input_blocks, unit_columns
from ..reset import GXDReset

__all__ = ["assert_first_order", "assert_reset_invariants", "describe"]

EPSILONS = tuple(2e-3 * 2.0**-k for k in range(11))
"""Scales of the chosen units' outgoing weights in `assert_first_order`."""

ROUND_OFF = 5e-15
"""Relative size of float64 round-off in a loss difference; smaller errors are not judged."""


def describe(model: nn.Module, *args: Any, **kwargs: Any) -> str:
    """What `GXDReset` finds in ``model`` for one example batch, as a readable table.

    The model is left as it was (no hooks, buffers and random state restored).

    Args:
        model: the model.
        *args: an example batch, as ``model(*args)`` takes it.
        **kwargs: keyword inputs of the model, and `GXDReset` settings that change
            discovery (``reference``, ``layers``, ``exclude``) given as ``gxd_reference=...``,
            ``gxd_layers=...``, ``gxd_exclude=...``.

    Returns:
        One line per eligible layer (units, consumers with their column map and reference,
        the operations in between), then every skipped layer with the reason.

    Examples:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> print(describe(net, torch.randn(2, 3)))
        eligible layers
          0  4 units  -> 2 (mean)  via Relu
        skipped layers
          2  its units are part of the model's output
    """
    settings = {k[4:]: kwargs.pop(k) for k in list(kwargs) if k.startswith("gxd_")}
    with _discovered(model, args, kwargs, **settings) as opt:
        lines = ["eligible layers"]
        for name, info in opt.layers.items():
            consumers = ", ".join(_edge_text(e) for e in info.edges)
            via = f"  via {' -> '.join(info.path)}" if info.path else ""
            norms = f"  BatchNorm {', '.join(info.norms)}" if info.norms else ""
            lines.append(f"  {name}  {info.num_units} units  -> {consumers}{via}{norms}")
        if len(lines) == 1:
            lines.append("  (none)")
        lines.append("skipped layers")
        lines += [f"  {name}  {why}" for name, why in opt.skipped.items()] or ["  (none)"]
        return "\n".join(lines)


@contextmanager
def _discovered(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], **settings: Any
) -> Iterator[GXDReset]:
    """A throw-away `GXDReset` (learning rate 0, no resets) that has discovered ``model``."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = GXDReset(torch.optim.SGD(params, lr=0.0), model, replacement_rate=0.0, **settings)
    try:
        if settings.get("layers") is None:
            opt.discover(*args, **kwargs)
        yield opt
    finally:
        opt.close()


def _edge_text(edge: Edge) -> str:
    details = [edge.reference]
    if edge.columns_per_unit > 1:
        details.append(f"{edge.columns_per_unit} columns/unit")
    note = f": {edge.note}" if edge.note else ""
    return f"{edge.consumer} ({', '.join(details)}{note})"


def assert_first_order(
    model: nn.Module,
    inputs: Tensor | Sequence[Tensor],
    loss_fn: Callable[[Any], Tensor],
    *,
    reference: str = "mean",
    units: Mapping[str, Sequence[Sequence[int]]] | None = None,
    subsets: int = 3,
    seed: int = 0,
    warmup: int = 3,
) -> None:
    """Check that resetting units changes the loss by ``Σ predicted_cost`` to first order.

    On a float64 copy of ``model``: a few zero-learning-rate steps build the references; its
    dropout and BatchNorm layers are then put in eval mode (BatchNorm on its running
    statistics, since in training mode a BatchNorm right after a consumer would undo the
    scaling below), and every
    forward pass of the check starts from the same random state, so that any randomness eval
    mode leaves on (functional dropout with ``training=True``, noise layers) draws the same
    values before and after a reset. For every eligible layer and unit set ``S``, the
    outgoing weights of ``S`` are scaled by ``ε``; the loss change of resetting ``S`` must
    then equal ``Σ_{i∈S} c_i`` up to an error that shrinks as ``ε²``: halving ``ε`` must
    quarter it, judged at the smallest ``ε`` whose error is still above float64 round-off
    (larger ``ε`` may cross a ReLU kink).

    Args:
        model: the model (not modified).
        inputs: one batch: a tensor, or a sequence of tensors passed as ``model(*inputs)``.
        loss_fn: maps the model's output to a scalar loss.
        reference: ``"mean"`` or ``"zero"``.
        units: unit sets to check per layer; by default every layer gets ``subsets`` random
            sets (the first a single unit).
        subsets: how many random sets per layer when ``units`` is not given.
        seed: seed of the random sets and of the model copy's random state.
        warmup: zero-learning-rate steps before checking.

    Raises:
        AssertionError: naming the layer, the units and the errors per ``ε``.

    Examples:
        >>> net = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 1))
        >>> x = torch.randn(8, 2, 6)
        >>> assert_first_order(net, x, lambda out: out.pow(2).mean())  # every layer, 3 sets each
        >>> assert_first_order(net, x, lambda out: out.mean(), units={"0": [[0, 3]]})
    """
    torch.manual_seed(seed)
    net = copy.deepcopy(model).double().train()
    batch = tuple(
        t.double() if isinstance(t, Tensor) and t.is_floating_point() else t
        for t in ((inputs,) if isinstance(inputs, Tensor) else inputs)
    )
    opt = GXDReset(
        torch.optim.SGD(net.parameters(), lr=0.0),
        net,
        reference=reference,
        replacement_rate=0.0,
        maturity=0,
        decay=0.5,
    )
    for _ in range(warmup):
        opt.zero_grad()
        loss_fn(net(*batch)).backward()  # type: ignore[no-untyped-call]
        opt.step()
    for module in net.modules():  # the rest stays in training mode: the hooks track it
        if isinstance(module, (_BatchNorm, nn.modules.dropout._DropoutNd)):
            module.eval()
    generator = torch.Generator().manual_seed(seed)
    for name, info in opt.layers.items():
        chosen = (
            units.get(name, ())
            if units is not None
            else _random_sets(info.num_units, subsets, generator)
        )
        for unit_set in chosen:
            _check_first_order(opt, name, torch.tensor(sorted(set(unit_set))), batch, loss_fn)


def _random_sets(count: int, subsets: int, generator: torch.Generator) -> list[list[int]]:
    sets = []
    for k in range(subsets):
        size = 1 if k == 0 else int(torch.randint(1, count + 1, (1,), generator=generator))
        sets.append(torch.randperm(count, generator=generator)[:size].tolist())
    return sets


def _check_first_order(
    opt: GXDReset,
    name: str,
    index: Tensor,
    batch: tuple[Any, ...],
    loss_fn: Callable[[Any], Tensor],
) -> None:
    info = opt.layers[name]
    errors, predictions = [], []
    loss = 0.0
    for eps in EPSILONS:
        trial = copy.deepcopy(opt)
        modules = dict(trial.model.named_modules())
        with torch.no_grad():
            for edge in info.edges:
                consumer = modules[edge.consumer]
                weight = canonical(layer_params(consumer)[0], consumer)
                columns = unit_columns(index, edge.columns_per_unit)
                for outputs, local, _ in input_blocks(weight, columns, _groups(consumer)):
                    block = weight[outputs]
                    block.index_copy_(1, local, block.index_select(1, local) * eps)
        trial.zero_grad()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            before = loss_fn(trial.model(*batch))
        before.backward()  # type: ignore[no-untyped-call]
        predicted = float(trial.predicted_cost(name)[index].sum())
        trial.reset_units(name, index)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            after = loss_fn(trial.model(*batch))
        loss = float(before.detach())
        errors.append(abs(float(after - before.detach()) - predicted))
        predictions.append(predicted)
    floor = ROUND_OFF * max(1.0, abs(loss))
    ratios = [a / b for a, b in itertools.pairwise(errors) if b > floor]
    if errors[-1] <= floor:
        # The error vanishes at small eps. A ReLU kink crossed at larger eps shows as a pair
        # whose ratio is far from 4; only the pairs below the last such crossing count.
        kinks = [i for i, r in enumerate(ratios) if not 1.5 < r < 10.0]
        ratios = ratios[kinks[-1] + 1 :] if kinks else ratios
        if not ratios:  # the error fell to round-off: the loss is linear in the reset there
            return
    tail = ratios[-2:]
    if tail and any(3.0 < r < 5.3 for r in tail) and not any(1.6 < r < 2.4 for r in tail):
        return
    rows = "\n".join(
        f"    eps={eps:.3g}: predicted {p:+.6g}, |realised - predicted| {e:.3g}"
        for eps, p, e in zip(EPSILONS, predictions, errors, strict=True)
    )
    raise AssertionError(
        f"layer {name!r}, units {index.tolist()}: the loss change of the reset is not "
        f"Σ predicted_cost to first order (the error should quarter when eps halves; "
        f"ratios {[round(r, 2) for r in ratios]}):\n{rows}"
    )


def assert_reset_invariants(opt: GXDReset, name: str, indices: Sequence[int]) -> None:
    """Reset ``indices`` of layer ``name`` and check what changed, and what did not.

    Checked: every ``Parameter`` object is the same; every entry of every parameter and of
    every optimizer-state tensor outside the touched slices is bit-identical (consumer biases,
    which absorb the mean reference, excepted); the outgoing weights of the units are zero
    (except rows redrawn by the same reset); the new incoming weights lie within the default
    initialisation bound; BatchNorm entries are restored; touched state slices are cleared
    under the wrapper's ``state_policy`` (averages of the parameter take its new values).

    Raises:
        AssertionError: naming the parameter or state entry that broke an invariant.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
        >>> opt = GXDReset(torch.optim.Adam(net.parameters(), lr=1e-2), net)
        >>> for _ in range(3):  # some optimizer state to clear
        ...     opt.zero_grad()
        ...     net(torch.randn(4, 3)).pow(2).mean().backward()
        ...     opt.step()
        >>> assert_reset_invariants(opt, "0", [1, 4])
    """
    model = opt.model
    named = dict(model.named_modules())
    params = dict(model.named_parameters())
    identities = {n: id(p) for n, p in params.items()}
    before = {n: p.detach().clone() for n, p in params.items()}
    states = {
        n: {k: v.clone() for k, v in opt.state[p].items() if isinstance(v, Tensor)}
        for n, p in params.items()
        if p in opt.state
    }
    info = opt.layers[name]
    index = torch.tensor(sorted(set(indices)), dtype=torch.long)
    redrawn = (name, *info.partners)
    masks: dict[str, Tensor] = {}  # what the reset may change, per parameter
    outgoing: dict[str, Tensor] = {}  # the consumer weights that must be zero after it
    for owner in (*redrawn, *info.norms):
        for attr, param in layer_tensors(named[owner]):
            masks[f"{owner}.{attr}"] = _rows(named[owner], param, index)
    for edge in info.edges:
        consumer = named[edge.consumer]
        weight = layer_params(consumer)[0]
        columns = _columns(consumer, weight, unit_columns(index, edge.columns_per_unit))
        outgoing[f"{edge.consumer}.weight"] = columns
        masks[f"{edge.consumer}.weight"] = masks.get(f"{edge.consumer}.weight", columns) | columns
    folded = {f"{e.consumer}.bias" for e in info.edges if e.reference == "mean"}
    opt.reset_units(name, index)

    assert {n: id(p) for n, p in model.named_parameters()} == identities, "a Parameter was replaced"
    for pname, p in model.named_parameters():
        mask = masks.get(pname, torch.zeros(p.shape, dtype=torch.bool, device=p.device))
        if pname not in folded and not torch.equal(p[~mask], before[pname][~mask]):
            raise AssertionError(f"{pname}: entries outside the reset units changed")
        if pname in outgoing:
            zero = outgoing[pname]
            if pname.rpartition(".")[0] in redrawn:  # rows redrawn by this reset read anything
                zero = zero & ~_rows(named[pname.rpartition(".")[0]], p, index)
            if not bool((p.detach()[zero] == 0).all()):
                raise AssertionError(f"{pname}: outgoing weights of the units are not zero")
        owner = named[pname.rpartition(".")[0]]
        if pname.rpartition(".")[0] in redrawn and not is_transposed(owner):
            fan_in = canonical(layer_params(owner)[0], owner)[0].numel()
            if float(p.detach()[_rows(owner, p, index)].abs().max()) > fan_in**-0.5:
                raise AssertionError(f"{pname}: new weights outside U(±1/sqrt(fan_in))")
        _check_state(opt, pname, p, mask, states.get(pname, {}), _groups(owner))
    for norm in info.norms:
        bn = named[norm]
        for attr, value in (
            ("weight", 1.0),
            ("bias", 0.0),
            ("running_mean", 0.0),
            ("running_var", 1.0),
        ):
            tensor = getattr(bn, attr)
            if tensor is not None and not bool((tensor.detach()[index] == value).all()):
                raise AssertionError(f"{norm}.{attr} of the reset units is not {value}")


def _check_state(
    opt: GXDReset, pname: str, p: Tensor, mask: Tensor, old_state: dict[str, Tensor], groups: int
) -> None:
    """The optimizer state of ``p``: unchanged outside ``mask``, cleared inside it."""
    for key, old in old_state.items():
        new = opt.state[p][key]
        if old.shape != p.shape:
            if not torch.equal(new, old):
                raise AssertionError(f"{pname}/{key}: per-tensor state changed")
            continue
        if not torch.equal(new[~mask], old[~mask]):
            raise AssertionError(f"{pname}/{key}: state outside the reset units changed")
        cleared = new[mask]
        if key in PARAMETER_KEYS:
            if not torch.equal(cleared, p.detach()[mask].to(cleared)):
                raise AssertionError(
                    f"{pname}/{key}: the reset units' average is not the new value"
                )
            continue
        scale = opt.config.state_policy == "mean_scale" and key in SECOND_MOMENT_KEYS
        if not scale and not bool((cleared == 0).all()):
            raise AssertionError(f"{pname}/{key}: state of the reset units not cleared")
        whole_rows_or_columns = bool(mask.any()) and groups == 1
        if scale and whole_rows_or_columns and _one_direction(mask):
            expected = torch.full_like(cleared, float(old[~mask].mean()))
            torch.testing.assert_close(cleared, expected, msg=f"{pname}/{key}: not refilled")


def _one_direction(mask: Tensor) -> bool:
    """Whether ``mask`` holds whole rows only, or whole columns only (one refilled mean)."""
    flat = mask.reshape(mask.shape[0], mask.shape[1] if mask.dim() > 1 else 1, -1).any(2)
    rows, columns = flat.all(1), flat.all(0)
    return bool((flat == rows[:, None]).all()) or bool((flat == columns[None, :]).all())


def _rows(module: nn.Module, param: Tensor, index: Tensor) -> Tensor:
    """The mask of a layer's unit rows ``index`` in ``param`` (its weight, bias, or a norm's)."""
    mask = torch.zeros(param.shape, dtype=torch.bool, device=param.device)
    canonical(mask, module).index_fill_(0, index.to(param.device), True)
    return mask


def _columns(module: nn.Module, weight: Tensor, columns: Tensor) -> Tensor:
    """The mask of a consumer's input ``columns`` in its weight (grouped ones per group)."""
    mask = torch.zeros(weight.shape, dtype=torch.bool, device=weight.device)
    view = canonical(mask, module)
    for rows, local, _ in input_blocks(view, columns, _groups(module)):
        view[rows].index_fill_(1, local.to(weight.device), True)
    return mask


def _groups(module: nn.Module) -> int:
    return int(getattr(module, "groups", 1))
