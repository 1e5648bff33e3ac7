"""An optimizer that wraps another: it is a ``torch.optim.Optimizer`` to everyone who asks
(LR schedulers, Lightning, GradScaler), while the inner optimizer keeps the parameter groups
and the state, and its own state nests beside the inner one under one key (as optax nests
the states of chained transformations)."""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import optimizer as _optim

__all__ = ["DelegatingOptimizer"]


class DelegatingOptimizer(torch.optim.Optimizer):
    """The ``torch.optim.Optimizer`` interface of ``optimizer``, plus a state entry of its own.

    ``param_groups``, ``state`` and ``defaults`` are the inner optimizer's (with setters:
    ``load_state_dict`` of the inner optimizer rebinds them). ``state_dict()`` is the inner
    one's with the subclass's `_own_state_dict` under `KEY`; ``load_state_dict`` checks that
    entry with `_check_own_state` before the inner optimizer loads anything, then applies it.

    Args:
        optimizer: the inner optimizer.
    """

    KEY = "wrapper"
    """The key of the subclass's own entry in ``state_dict()``."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        # torch.optim.Optimizer.__init__ is skipped on purpose: the inner optimizer owns the
        # parameter groups and state. Its hook registries are still needed by step().
        self._optimizer_step_pre_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict[int, Callable[..., Any]] = (
            OrderedDict()
        )
        self._optimizer_load_state_dict_post_hooks: OrderedDict[int, Callable[..., Any]] = (
            OrderedDict()
        )
        self._patch_step_function()  # a no-op: `__init_subclass__` hooked `step` already
        self.optimizer = optimizer

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Give ``cls.step`` what ``torch.optim.Optimizer`` wraps every ``step`` in (step
        hooks, the profiler's label), at no cost while there is neither hook nor profiler."""
        super().__init_subclass__(**kwargs)
        if "step" in cls.__dict__ and not getattr(cls.step, "hooked", False):
            cls.step = _hooked(cls.step)  # type: ignore[method-assign]

    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        """The inner optimizer's parameter groups (LR schedulers act through these).

        Examples:
            >>> from torch import nn
            >>> from gxd_optim import GXDReset
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> group = opt.param_groups[0]
            >>> group["lr"] = 0.05  # what LR schedulers do
            >>> group is opt.optimizer.param_groups[0]
            True
        """
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property  # type: ignore[override]
    def state(self) -> Any:
        """The inner optimizer's per-parameter state."""
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property  # type: ignore[override]
    def defaults(self) -> dict[str, Any]:
        """The inner optimizer's defaults."""
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group to the inner optimizer.

        Examples:
            >>> from torch import nn
            >>> from gxd_optim import GXDReset
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model[0].parameters(), lr=0.1), model)
            >>> opt.add_param_group({"params": model[2].parameters(), "lr": 0.01})
            >>> len(opt.optimizer.param_groups)
            2
        """
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict plus this wrapper's entry under `KEY`.

        Examples:
            >>> from torch import nn
            >>> from gxd_optim import GXDReset
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> sorted(opt.state_dict())
            ['gxd_reset', 'param_groups', 'state']
        """
        out = self.optimizer.state_dict()
        out[self.KEY] = self._own_state_dict()
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from `state_dict()`; one without this wrapper's entry (a plain
        optimizer's) goes to `_load_plain_state_dict`.

        The entry is checked first (`_check_own_state`): a malformed one raises ``ValueError``
        and leaves the wrapper and the inner optimizer as they were.
        """
        state_dict = dict(state_dict)
        entry = state_dict.pop(self.KEY, None)
        if entry is None:
            self._load_plain_state_dict(state_dict)
            return
        checked = self._check_own_state(entry)
        self.optimizer.load_state_dict(state_dict)
        self._apply_own_state(checked)

    def _own_state_dict(self) -> Any:
        """This wrapper's entry in ``state_dict()`` (subclasses define it)."""
        raise NotImplementedError

    def _check_own_state(self, entry: object) -> Any:
        """Check an entry against this wrapper, changing nothing; return what to apply."""
        raise NotImplementedError

    def _apply_own_state(self, checked: Any) -> None:
        """Apply what `_check_own_state` returned."""
        raise NotImplementedError

    def _load_plain_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict without this wrapper's entry into the inner optimizer."""
        self.optimizer.load_state_dict(state_dict)

    def __getstate__(self) -> dict[str, Any]:  # type: ignore[override]
        state = self.__dict__.copy()
        state.pop("step", None)  # an LR scheduler's per-instance wrapper of the original's step
        return state


def _hooked(step: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` through ``torch.optim.Optimizer.profile_hook_step`` only where that does
    something: a step hook is registered (on the optimizer or globally) or a profiler runs."""
    full = torch.optim.Optimizer.profile_hook_step(step)

    @functools.wraps(step)
    def wrapper(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        if (
            self._optimizer_step_pre_hooks
            or self._optimizer_step_post_hooks
            or _optim._global_optimizer_pre_hooks
            or _optim._global_optimizer_post_hooks
            or torch._C._autograd._profiler_enabled()
        ):
            return full(self, *args, **kwargs)
        return step(self, *args, **kwargs)

    wrapper.hooked = True  # type: ignore[attr-defined]
    return wrapper
