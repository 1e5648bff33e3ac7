"""Per-unit statistics collected by hooks, committed only when the optimizer steps.

- `storage`: where the statistics live (flat slabs, per-layer and per-pair views);
- `kernels`: the pure reduction of one consumer's ``(h, ∂ℓ/∂h)`` to per-unit sums;
- `collector`: the hooks that run those kernels as gradients arrive;
- `predicted`: the predicted cost of resets, from the consumers' gradients;
- `tracker`: commit, discard and rollback of a step's sums, and what they say
  (utilities, eligibility, predicted cost).
"""

from .kernels import DEFAULT_LIMITS, Limits
from .storage import TINY, EdgeStats, LayerStats, Slab, Statistics
from .tracker import Tracker

__all__ = [
    "DEFAULT_LIMITS",
    "TINY",
    "EdgeStats",
    "LayerStats",
    "Limits",
    "Slab",
    "Statistics",
    "Tracker",
]
