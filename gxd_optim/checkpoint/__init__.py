"""The wrapper's own entry in ``GXDReset.state_dict()``: its format and checks (`format`),
and how a wrapper builds, checks and restores it (`entry`)."""

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
