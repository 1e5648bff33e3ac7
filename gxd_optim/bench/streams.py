"""Generated data of the benchmark problems: pure functions of a seed (or of a generator).

* the slowly-changing regression ("bit-flipping", Dohare et al. 2024): `LTUTarget`,
  `BitFlipStream`;
* random-label memorisation: `random_label_data`, `minibatches`;
* permuted inputs: `permutations`;
* image tasks: `prototype_images` and `prototype_tasks` (generated), `class_pairs` (which two
  classes each task of a labelled data set takes).

Examples:
    >>> stream = BitFlipStream(seed=0, flip_after=3)
    >>> x = stream.take(7)
    >>> x.shape, bool((x[:, -1] == 1).all())
    (torch.Size([7, 20]), True)
    >>> [int((x[i, :15] != x[i - 1, :15]).sum()) for i in range(1, 7)]
    [0, 0, 1, 0, 0, 1]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BitFlipStream",
    "LTUTarget",
    "class_pairs",
    "minibatches",
    "permutations",
    "prototype_images",
    "prototype_tasks",
    "random_label_data",
]


@dataclass(frozen=True)
class LTUTarget:
    """The target net of the slowly-changing regression: 100 linear threshold units.

    With inputs ``x ∈ {0, 1}^m`` (the last one constant 1, so its weight is the bias),
    weights ``V ∈ {±1}^{F×m}`` and output weights ``w ∈ {±1}^F``:

    $$
    f_k(x) = [V_k \\cdot x > \\theta_k], \\quad \\theta_k = \\beta\\, m - S_k, \\qquad
    y = \\sum_k w_k f_k(x)
    $$

    where ``S_k`` is the number of negative weights of feature ``k``: feature ``k`` is on when
    the input agrees with its weight pattern on more than a fraction ``β`` of the inputs.

    Attributes:
        weights: ``V``, ``[F, m]``.
        thresholds: ``θ``, ``[F]``.
        out_weights: ``w``, ``[F]``.
    """

    weights: Tensor
    thresholds: Tensor
    out_weights: Tensor

    @staticmethod
    def draw(seed: int, inputs: int = 20, features: int = 100, beta: float = 0.7) -> LTUTarget:
        """Draw the ±1 weights from ``seed`` and set the thresholds for ``beta``."""
        generator = torch.Generator().manual_seed(seed)
        weights = torch.randint(0, 2, (features, inputs), generator=generator).float() * 2 - 1
        out_weights = torch.randint(0, 2, (features,), generator=generator).float() * 2 - 1
        negatives = (weights < 0).sum(1).float()
        return LTUTarget(weights, beta * inputs - negatives, out_weights)

    def features(self, x: Tensor) -> Tensor:
        """``f(x)``: ``[N, m] → [N, F]`` of zeros and ones."""
        return (x @ self.weights.t() > self.thresholds).float()

    def __call__(self, x: Tensor) -> Tensor:
        """``y(x)``: ``[N, m] → [N, 1]``."""
        return (self.features(x) @ self.out_weights)[:, None]


class BitFlipStream:
    """Inputs of the slowly-changing regression, in order.

    Each input has ``flipping`` slowly-changing bits, ``inputs − flipping − 1`` bits drawn
    afresh for every example, and a last input fixed to 1. The slow bits start random; every
    ``flip_after`` examples one of them, chosen uniformly, flips.

    Args:
        seed: seed of the bits (one generator for the whole stream).
        inputs: ``m``, including the constant input.
        flipping: number of slowly-changing bits.
        flip_after: examples between two flips.
    """

    def __init__(self, seed: int, inputs: int = 20, flipping: int = 15, flip_after: int = 10_000):
        if not 0 < flipping < inputs or flip_after < 1:
            raise ValueError(
                f"need 0 < flipping < inputs and flip_after >= 1; got {flipping}, {inputs}, "
                f"{flip_after}"
            )
        self.inputs, self.flipping, self.flip_after = inputs, flipping, flip_after
        self._generator = torch.Generator().manual_seed(seed)
        self._slow = torch.randint(0, 2, (flipping,), generator=self._generator).float()
        self._next_flip = flip_after
        self.position = 0
        """Examples produced so far."""

    def take(self, count: int) -> Tensor:
        """The next ``count`` inputs, ``[count, inputs]``."""
        rows = torch.empty(count, self.flipping)
        done = 0
        while done < count:
            if self.position == self._next_flip:
                bit = int(torch.randint(0, self.flipping, (1,), generator=self._generator))
                self._slow[bit] = 1 - self._slow[bit]
                self._next_flip += self.flip_after
            run = min(count - done, self._next_flip - self.position)
            rows[done : done + run] = self._slow
            done += run
            self.position += run
        fast = torch.randint(
            0, 2, (count, self.inputs - self.flipping - 1), generator=self._generator
        ).float()
        return torch.cat([rows, fast, torch.ones(count, 1)], dim=1)


def random_label_data(
    samples: int, input_dim: int, classes: int, tasks: int, seed: int
) -> tuple[Tensor, Tensor]:
    """Fixed Gaussian inputs ``[samples, input_dim]`` and every task's labels ``[tasks, samples]``.

    Examples:
        >>> x, y = random_label_data(5, 3, 4, tasks=2, seed=0)
        >>> x.shape, y.shape, int(y.max()) < 4
        (torch.Size([5, 3]), torch.Size([2, 5]), True)
    """
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, input_dim, generator=generator)
    labels = torch.randint(0, classes, (tasks, samples), generator=generator)
    return inputs, labels


def minibatches(samples: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """One epoch: indices of a fresh random permutation, ``batch_size`` at a time.

    Examples:
        >>> batches = list(minibatches(5, 2, torch.Generator().manual_seed(0)))
        >>> [len(b) for b in batches], sorted(torch.cat(batches).tolist())
        ([2, 2, 1], [0, 1, 2, 3, 4])
    """
    order = torch.randperm(samples, generator=generator)
    for first in range(0, samples, batch_size):
        yield order[first : first + batch_size]


def permutations(tasks: int, size: int, seed: int) -> Tensor:
    """One random permutation of ``size`` input positions per task: ``[tasks, size]``.

    Examples:
        >>> p = permutations(3, 4, seed=0)
        >>> p.shape, sorted(p[1].tolist())
        (torch.Size([3, 4]), [0, 1, 2, 3])
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(size, generator=generator) for _ in range(tasks)])


def prototype_images(
    count: int, classes: int, size: int, noise: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Noisy images of ``classes`` new smooth random prototypes: ``[count, 3, size, size]``.

    Each class's prototype is a ``4×4×3`` Gaussian image upsampled bilinearly to
    ``size×size``; an example is its class's prototype, circularly shifted by up to 2 pixels
    each way, plus Gaussian noise of standard deviation ``noise``. Labels are balanced.

    Examples:
        >>> x, y = prototype_images(6, 2, 8, 0.5, torch.Generator().manual_seed(0))
        >>> x.shape, y.tolist()
        (torch.Size([6, 3, 8, 8]), [0, 1, 0, 1, 0, 1])
    """
    low = torch.randn(classes, 3, 4, 4, generator=generator)
    prototypes = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    labels = torch.arange(count) % classes
    shifts = torch.randint(-2, 3, (count, 2), generator=generator)
    images = torch.stack(
        [
            torch.roll(prototypes[int(c)], (int(s[0]), int(s[1])), dims=(1, 2))
            for c, s in zip(labels, shifts, strict=True)
        ]
    )
    images += noise * torch.randn(images.shape, generator=generator)
    return images, labels


def prototype_tasks(
    tasks: int, sizes: tuple[int, int], size: int, noise: float, generator: torch.Generator
) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Binary tasks of `prototype_images`, each with two new classes.

    Args:
        tasks: number of tasks.
        sizes: training and held-out examples per task.
        size: image height and width.
        noise: standard deviation of the pixel noise.
        generator: the source of every prototype, shift and noise.

    Returns:
        Per task: training images and labels, held-out images and labels.
    """
    train, test = sizes
    for _ in range(tasks):
        x, y = prototype_images(train + test, 2, size, noise, generator)
        yield x[:train], y[:train], x[train:], y[train:]


def class_pairs(tasks: int, classes: int, seed: int) -> Tensor:
    """Two distinct classes per task, drawn at random: ``[tasks, 2]``.

    Examples:
        >>> pairs = class_pairs(4, 10, seed=0)
        >>> pairs.shape, bool((pairs[:, 0] != pairs[:, 1]).all())
        (torch.Size([4, 2]), True)
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(classes, generator=generator)[:2] for _ in range(tasks)])
