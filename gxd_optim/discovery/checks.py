"""What a reset must never write, and layers named by the user instead of discovered."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from .layers import (
    LayerInfo,
    edge_for,
    layer_tensors,
    num_units,
    producer_modules,
    unwrap_model,
    weight_problem,
)


@dataclass(frozen=True)
class Checks:
    """What the reset must never write, whatever the graph says.

    A layer is untouchable when the user excluded it, when its weights cannot be written in
    place (`weight_problem`), when a parameter of it is frozen (``requires_grad=False``), held
    by another module too (tied weights) or not in the optimizer.

    Attributes:
        exclude: names of the layers the user asked to leave alone (``exclude=``).
        trainable: identities of the optimizer's parameters (``None``: every parameter).
        holders: for every parameter that several modules hold, their names.

    Examples:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> net[2].requires_grad_(False)
        Linear(in_features=3, out_features=1, bias=True)
        >>> Checks.of(net).layer("2", net[2])
        'frozen (its weight has requires_grad=False)'
    """

    exclude: frozenset[str] = frozenset()
    trainable: frozenset[int] | None = None
    holders: Mapping[int, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        model: nn.Module,
        exclude: Iterable[str] = (),
        trainable: Iterable[Tensor] | None = None,
    ) -> Checks:
        """The checks for ``model``, with ``exclude`` and the optimizer's parameters."""
        holders: dict[int, list[tuple[str, nn.Module]]] = {}
        for name, module in unwrap_model(model).named_modules(remove_duplicate=False):
            for param in module._parameters.values():
                if param is not None:
                    held = holders.setdefault(id(param), [])
                    if all(other is not module for _, other in held):
                        held.append((name, module))
        return cls(
            frozenset(exclude),
            None if trainable is None else frozenset(id(p) for p in trainable),
            {key: tuple(n for n, _ in held) for key, held in holders.items() if len(held) > 1},
        )

    def layer(self, name: str, module: nn.Module) -> str:
        """Why the reset must not write this Linear/Conv layer (``''`` if it may)."""
        if name in self.exclude:
            return "excluded by the user (exclude=)"
        return weight_problem(module) or self._parameters(name, module)

    def norm(self, name: str, norm: nn.Module, calls: int = 1) -> str:
        """Why the reset must not write this BatchNorm (``''`` if it may)."""
        if calls > 1:
            return f"its BatchNorm `{name}` is called {calls} times per pass (shared by layers)"
        problem = self._parameters(name, norm)
        return f"its BatchNorm `{name}` is {problem}" if problem else ""

    def _parameters(self, name: str, module: nn.Module) -> str:
        for attr, param in layer_tensors(module):
            if not param.requires_grad:
                return f"frozen (its {attr} has requires_grad=False)"
            others = [n for n in self.holders.get(id(param), ()) if n != name]
            if others:
                return f"sharing its {attr} with `{others[0]}` (tied weights)"
            if self.trainable is not None and id(param) not in self.trainable:
                return (
                    "not in the optimizer" if attr == "weight" else f"not in the optimizer ({attr})"
                )
        return ""


def explicit_layers(
    model: nn.Module,
    layers: Mapping[str, Sequence[str]],
    reference: str,
    checks: Checks | None = None,
) -> tuple[dict[str, LayerInfo], dict[str, str]]:
    """Build layer infos from a user's ``{producer: [consumers]}`` map, trusting the paths.

    Raises:
        ValueError: a name that is not a Linear/Conv layer of the model, a producer without
            consumers or among its own consumers, a layer the reset must not write (`Checks`),
            or shapes that cannot line up.
    """
    checks = Checks.of(model) if checks is None else checks
    if not isinstance(layers, Mapping):
        raise TypeError(f"layers= must be a mapping {{producer: [consumers]}}, got {layers!r}")
    clash = sorted(set(checks.exclude) & set(layers))
    if clash:
        raise ValueError(f"layers {clash} are both in layers= and exclude=")
    modules = producer_modules(model)
    infos: dict[str, LayerInfo] = {}
    claimed: dict[str, str] = {}
    for producer, consumers in layers.items():
        if isinstance(consumers, str) or not isinstance(consumers, Sequence) or not consumers:
            raise ValueError(f"layers[{producer!r}] must be a non-empty list of consumer names")
        names = [producer, *consumers]
        unknown = [n for n in names if n not in modules]
        if unknown:
            raise ValueError(
                f"layers= names {unknown} that are not Linear/Conv layers of the model; "
                f"known: {sorted(modules)}"
            )
        if producer in consumers:
            raise ValueError(f"layers[{producer!r}] lists the producer as its own consumer")
        for name in names:
            problem = checks.layer(name, modules[name])
            if problem:
                role = "the producer" if name == producer else f"its consumer `{name}`"
                raise ValueError(f"layers[{producer!r}]: {role} is {problem}")
        units = num_units(modules[producer])
        edges = []
        for consumer in consumers:
            if consumer in claimed:
                raise ValueError(
                    f"layers: `{consumer}` is listed as a consumer of both "
                    f"`{claimed[consumer]}` and `{producer}`; a consumer reads one producer"
                )
            claimed[consumer] = producer
            edge = edge_for(modules[consumer], consumer, units, reference)
            if isinstance(edge, str):
                raise ValueError(f"layers[{producer!r}]: {edge}")
            if edge.columns_per_unit > 1 and isinstance(modules[producer], nn.Linear):
                raise ValueError(
                    f"layers[{producer!r}]: `{consumer}` has {edge.columns_per_unit}x more "
                    "inputs than the producer has units; a Linear producer must feed it alone"
                )
            edges.append(edge)
        infos[producer] = LayerInfo(producer, units, tuple(edges))
    return infos, {}
