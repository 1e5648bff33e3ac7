"""The wrapper's own entry in ``GXDReset.state_dict()``: packing, checking and restoring.

The entry holds the discovered layer structure, so a checkpoint restores into a fresh model
and wrapper without a forward pass, and the statistics, budgets, counts, the statistics of
backward passes no step has committed yet and the generator state, so training resumes bit
for bit, mid-accumulation too.

Loading is check-then-apply: `parse` reads and checks the whole entry (types, shapes, finite
values, the generator state, the model's architecture) and raises before anything changes;
only a parsed `Entry` is applied.
"""

from .entry import Checkpointing, build, read, restore
from .format import FORMAT_VERSION, KEY, Entry, check, layers_from_dict, layers_to_dict, parse

__all__ = [
    "FORMAT_VERSION",
    "KEY",
    "Checkpointing",
    "Entry",
    "build",
    "check",
    "layers_from_dict",
    "layers_to_dict",
    "parse",
    "read",
    "restore",
]
