"""Hypothesis strategies to fuzz `GXDReset` on small models and on your own modules.

Needs `hypothesis <https://hypothesis.readthedocs.io>`_ (``pip install hypothesis``, or the
``test`` extra of gxd_optim); the rest of `gxd_optim.testing` does not.

- `specs`, `models` and `batches`: small MLPs and CNNs covering every pattern discovery
  follows (activations, in-place and functional ReLU, BatchNorm, pooling, flatten into a
  Linear, convolutions with and without bias or padding, two heads), with matching batches.
- `cases`: your own module, built from drawn constructor arguments, with a matching batch.
- `unit_sets`: the ``units=`` argument of `gxd_optim.testing.assert_first_order`.

Models and batches are drawn from a seed, so a failing example replays exactly.

Examples:
    >>> from hypothesis import given, settings
    >>> from gxd_optim.testing import assert_first_order
    >>> from gxd_optim.testing import strategies as gst
    >>> @settings(max_examples=3, deadline=None)
    ... @given(gst.models())
    ... def test_first_order(case):
    ...     assert_first_order(case.model, case.inputs, lambda out: out.pow(2).mean())
    >>> test_first_order()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

try:
    from hypothesis import strategies as st
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "gxd_optim.testing.strategies needs hypothesis: pip install hypothesis "
        "(or pip install 'gxd_optim[test]')"
    ) from error

from . import _discovered
from .models import ACTIVATIONS, POOLS, CNNSpec, MLPSpec, build, example_input

__all__ = ["Case", "batches", "cases", "models", "seeds", "specs", "unit_sets"]

Spec = MLPSpec | CNNSpec


class Case(NamedTuple):
    """A model and one batch for it; unpacks as ``model, inputs = case``.

    Attributes:
        model: the module, freshly initialised.
        inputs: a batch it takes as ``model(inputs)``.
        params: the drawn arguments the model was built from (its spec for `models`).

    Examples:
        >>> case = Case(torch.nn.Linear(2, 3), torch.zeros(4, 2), {})
        >>> case.model(case.inputs).shape
        torch.Size([4, 3])
    """

    model: nn.Module
    inputs: Tensor
    params: Any


def seeds() -> st.SearchStrategy[int]:
    """Seeds of the model's initialisation and of the batch's values.

    Examples:
        >>> from hypothesis import given
        >>> @given(seeds())
        ... def test_seed(seed):
        ...     assert 0 <= seed < 2**32
        >>> test_seed()
    """
    return st.integers(0, 2**32 - 1)


def specs(
    kinds: Sequence[str] = ("mlp", "cnn"), activations: Sequence[str] = ACTIVATIONS
) -> st.SearchStrategy[Spec]:
    """Specs of small MLPs and CNNs (`gxd_optim.testing.models`) that keep every map non-empty.

    MLPs: 1 to 3 hidden layers of 2 to 7 units, optional BatchNorm, one or two heads.
    CNNs: 1 or 2 convolutions of 2 to 4 channels on 8×8 to 10×10 images, optional BatchNorm,
    padding 0 or 1, any pooling of `POOLS`, with or without bias and a hidden Linear after
    the flatten.

    Args:
        kinds: which architectures, ``"mlp"`` and/or ``"cnn"``.
        activations: activation names to draw from (`ACTIVATIONS`).

    Raises:
        ValueError: for an unknown kind or activation, or none of either.

    Examples:
        >>> from hypothesis import given
        >>> @given(specs(kinds=["cnn"], activations=["gelu"]))
        ... def test_spec(spec):
        ...     assert isinstance(spec, CNNSpec) and spec.act == "gelu"
        >>> test_spec()
    """
    unknown = sorted(set(kinds) - {"mlp", "cnn"}) + sorted(set(activations) - set(ACTIVATIONS))
    if unknown or not kinds or not activations:
        raise ValueError(
            f"specs() needs kinds from ('mlp', 'cnn') and activations from {ACTIVATIONS}; "
            f"got kinds={list(kinds)}, activations={list(activations)}"
        )
    acts = st.sampled_from(list(activations))
    mlps = st.builds(
        MLPSpec,
        inputs=st.integers(2, 6),
        widths=st.lists(st.integers(2, 7), min_size=1, max_size=3).map(tuple),
        outputs=st.integers(1, 3),
        act=acts,
        norm=st.booleans(),
        two_heads=st.booleans(),
    )
    cnns = st.builds(
        CNNSpec,
        in_channels=st.integers(1, 3),
        channels=st.lists(st.integers(2, 4), min_size=1, max_size=2).map(tuple),
        size=st.integers(8, 10),
        outputs=st.integers(1, 3),
        act=acts,
        norm=st.booleans(),
        padding=st.sampled_from([0, 1]),
        pool=st.sampled_from(POOLS),
        hidden=st.sampled_from([0, 3]),
        bias=st.booleans(),
    )
    chosen = [s for kind, s in (("mlp", mlps), ("cnn", cnns)) if kind in kinds]
    return st.one_of(chosen)


def batches(
    spec: Spec,
    sizes: st.SearchStrategy[int] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> st.SearchStrategy[Tensor]:
    """Standard-normal batches for the model of ``spec``.

    Args:
        spec: the model's spec.
        sizes: batch sizes (default 4 to 9 samples).
        dtype: floating-point type.

    Examples:
        >>> from hypothesis import given
        >>> @given(batches(MLPSpec(3, (4,), 1), st.just(5)))
        ... def test_batch(x):
        ...     assert x.shape == (5, 3)
        >>> test_batch()
    """
    return st.builds(
        lambda n, seed: example_input(
            spec, n, dtype=dtype, generator=torch.Generator().manual_seed(seed)
        ),
        sizes if sizes is not None else st.integers(4, 9),
        seeds(),
    )


def models(
    spec_strategy: st.SearchStrategy[Spec] | None = None,
    sizes: st.SearchStrategy[int] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> st.SearchStrategy[Case]:
    """Small models of drawn specs with a matching batch: ``Case(model, inputs, spec)``.

    Args:
        spec_strategy: the specs (default `specs()`: every MLP and CNN pattern).
        sizes: batch sizes (default 4 to 9 samples).
        dtype: floating-point type of the model and the batch.

    Examples:
        >>> from hypothesis import given, settings
        >>> @settings(max_examples=5)
        ... @given(models(specs(kinds=["mlp"])))
        ... def test_runs(case):
        ...     model, x = case.model, case.inputs
        ...     assert model(x).shape[0] == x.shape[0]
        >>> test_runs()
    """

    def with_batch(spec: Spec) -> st.SearchStrategy[Case]:
        return st.builds(
            lambda seed, x: Case(_seeded(lambda: build(spec), seed).to(dtype), x, spec),
            seeds(),
            batches(spec, sizes, dtype=dtype),
        )

    return (spec_strategy if spec_strategy is not None else specs()).flatmap(with_batch)


def cases(
    factory: Callable[..., nn.Module],
    input_shape: Sequence[int] | Callable[..., Sequence[int]],
    *,
    sizes: st.SearchStrategy[int] | None = None,
    dtype: torch.dtype = torch.float32,
    **params: st.SearchStrategy[Any],
) -> st.SearchStrategy[Case]:
    """Your own module, built from drawn arguments, with a matching batch.

    Each example draws the keyword arguments ``params``, builds ``factory(**params)`` from a
    drawn seed (the global random state is left alone), and draws a standard-normal batch of
    shape ``(n, *input_shape)``.

    Args:
        factory: builds the module from keyword arguments (a class or a function).
        input_shape: the shape of one sample, or a function of the drawn arguments
            (``input_shape(**params)``) that returns it.
        sizes: batch sizes (default 4 to 9 samples).
        dtype: floating-point type of the module and the batch.
        **params: a strategy for each keyword argument of ``factory``.

    Examples:
        >>> from hypothesis import given, settings
        >>> def mlp(width, depth):
        ...     layers = [torch.nn.Linear(3, width), torch.nn.ReLU()]
        ...     layers += [torch.nn.Linear(width, width), torch.nn.ReLU()] * (depth - 1)
        ...     return torch.nn.Sequential(*layers, torch.nn.Linear(width, 1))
        >>> @settings(max_examples=5)
        ... @given(cases(mlp, (3,), width=st.integers(2, 8), depth=st.integers(1, 2)))
        ... def test_my_mlp(case):
        ...     assert case.model(case.inputs).shape == (case.inputs.shape[0], 1)
        >>> test_my_mlp()
    """

    def shape_of(drawn: dict[str, Any]) -> Sequence[int]:
        return input_shape(**drawn) if callable(input_shape) else input_shape

    def make(drawn: dict[str, Any], seed: int, n: int, data_seed: int) -> Case:
        model = _seeded(lambda: factory(**drawn), seed).to(dtype)
        generator = torch.Generator().manual_seed(data_seed)
        inputs = torch.randn((n, *shape_of(drawn)), dtype=dtype, generator=generator)
        return Case(model, inputs, drawn)

    return st.builds(
        make,
        st.fixed_dictionaries(params),
        seeds(),
        sizes if sizes is not None else st.integers(4, 9),
        seeds(),
    )


def unit_sets(
    model: nn.Module, *inputs: Any, max_sets: int = 1, **settings: Any
) -> st.SearchStrategy[Mapping[str, list[list[int]]]]:
    """Unit sets per eligible layer of ``model``: the ``units=`` of `assert_first_order`.

    Discovery runs once, when the strategy is made (draw it with ``st.data()``).

    Args:
        model: the model.
        *inputs: an example batch, as ``model(*inputs)`` takes it.
        max_sets: at most this many non-empty sets per layer.
        **settings: `GXDReset` settings that change discovery (``reference``, ``exclude``).

    Examples:
        >>> from hypothesis import given
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
        >>> @given(unit_sets(net, torch.randn(3, 2)))
        ... def test_sets(units):
        ...     [chosen] = units["0"]
        ...     assert chosen and set(chosen) <= set(range(5))
        >>> test_sets()
    """
    with _discovered(model, inputs, {}, **settings) as opt:
        sizes = {name: info.num_units for name, info in opt.layers.items()}
    return st.fixed_dictionaries(
        {
            name: st.lists(
                st.lists(st.integers(0, n - 1), min_size=1, unique=True),
                min_size=1,
                max_size=max_sets,
            )
            for name, n in sizes.items()
        }
    )


def _seeded(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()
