"""Find the units at the first training pass, whichever way it enters the model.

Most models are trained through their ``forward``: a pre-hook on the root module then replays
that call on the same batch to find the units (`gxd_optim.discovery.discover`) before the
real pass runs, so the first step is tracked too. Others are trained through another method
or a submodule: stable-baselines3 trains a policy through ``evaluate_actions``, a
LightningModule's ``training_step`` calls ``self.net(x)``. Their first training pass is
recorded as it runs, from the first module call that needs gradients to the backward that
follows it (`gxd_optim.discovery.PassRecorder`), and the units are found from that graph;
tracking starts with the next pass.

Only training passes count: a module in training mode, called with gradients enabled, and
not inside another wrapper's discovery replay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .discovery import PassRecorder, Trace, is_replaying, unwrap_model
from .hooks import OwnedHook

__all__ = ["LazyDiscovery"]


def _training(module: nn.Module) -> bool:
    return torch.is_grad_enabled() and module.training and not is_replaying()


class LazyDiscovery:
    """Waits for the model's first training pass and hands it to the wrapper.

    Args:
        model: the model (wrappers are stripped).
        replay: called with the root's ``(args, kwargs)`` when a training pass enters
            through the root's ``forward``.
        recorded: called with the recorded `Trace` of a pass that entered elsewhere.
    """

    def __init__(
        self,
        model: nn.Module,
        replay: Callable[[tuple[Any, ...], dict[str, Any]], None],
        recorded: Callable[[Trace], None],
    ) -> None:
        self.root = unwrap_model(model)
        self._replay = replay
        self._recorded = recorded
        self._handles: list[RemovableHandle] = []
        self.recorder: PassRecorder | None = None

    def arm(self) -> None:
        """Hook the root's ``forward`` and every submodule's calls."""
        self.disarm()
        root = self.root
        self._handles.append(
            root.register_forward_pre_hook(
                OwnedHook(self, root, "_root_called", ""), with_kwargs=True
            )
        )
        for name, module in root.named_modules():
            if module is root:
                continue
            self._handles += [
                module.register_forward_pre_hook(
                    OwnedHook(self, module, "_entered", name), with_kwargs=True
                ),
                module.register_forward_hook(
                    OwnedHook(self, module, "_left", name), with_kwargs=True, always_call=True
                ),
            ]

    def disarm(self) -> None:
        """Remove every hook (a recording goes on until `settle` or `close`)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def idle(self) -> bool:
        """Whether nothing is hooked or recorded any more."""
        return not self._handles and self.recorder is None

    def close(self) -> None:
        """Remove every hook and drop any recording."""
        self.disarm()
        if self.recorder is not None:
            self.recorder.stop()
            self.recorder = None

    def settle(self, stepping: bool) -> None:
        """The optimizer steps (``stepping``) or zeroes its gradients: end a recording.

        A recording whose backward was announced is taken off the mode stack. One still
        waiting for it at a step (the backward ran as ``torch.autograd.grad``, say) is
        analysed as it stands; at ``zero_grad`` it goes on, since some loops compute the loss
        before zeroing the gradients.
        """
        recorder = self.recorder
        if recorder is None or not (stepping or recorder.finished):
            return
        self.recorder = None
        recorder.stop()
        if not recorder.finished:
            self._recorded(recorder.trace())

    def _root_called(
        self, _: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if self.recorder is None and _training(module):
            self._replay(args, kwargs)

    def _entered(
        self, _: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if is_replaying():
            return
        if self.recorder is None:
            if not _training(module):
                return
            self.recorder = PassRecorder(self._on_backward)
            self.recorder.start()
        self.recorder.enter(module, args, kwargs)

    def _left(
        self,
        name: str,
        module: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
    ) -> None:
        if self.recorder is not None and not is_replaying():
            self.recorder.leave(name, module, args, kwargs, output)

    def _on_backward(self, tensors: list[Tensor]) -> None:
        assert self.recorder is not None
        self._recorded(self.recorder.trace(tensors))
