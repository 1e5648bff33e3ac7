"""gxd_optim: restore plasticity by resetting the units whose replacement costs least.

>>> import torch
>>> from gxd_optim import GXDReset
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> opt = GXDReset(torch.optim.Adam(model.parameters(), lr=1e-3), model)
"""

from .copies import mirror_resets
from .discovery import Edge, LayerInfo
from .distributed import assert_replicas_in_sync
from .operator import STATE_POLICIES
from .reset import GXDReset
from .utilities import UTILITIES, gxd

__all__ = [
    "STATE_POLICIES",
    "UTILITIES",
    "Edge",
    "GXDReset",
    "LayerInfo",
    "assert_replicas_in_sync",
    "gxd",
    "mirror_resets",
]
__version__ = "0.1.0"
