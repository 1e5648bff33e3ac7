"""Copies: ``copy.deepcopy`` and ``pickle`` of a model and its wrapper (about 1 s on CPU).

The wrapper holds the model, so copy the two together: the copy's optimizer then steps the copy's
parameters. Shown on docs/howto/wrap.md.
"""

import copy
import pickle

import torch
from torch import nn

from gxd_optim import GXDReset

model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
opt = GXDReset(torch.optim.Adam(model.parameters(), lr=1e-3), model)
model(torch.randn(8, 20))  # the first training forward pass finds the units

model2, opt2 = copy.deepcopy((model, opt))  # an independent model and wrapper
model3, opt3 = pickle.loads(pickle.dumps((model, opt)))  # the same through pickle

for m, o in ((model2, opt2), (model3, opt3)):
    owned = {id(p) for group in o.param_groups for p in group["params"]}
    print(f"the copy steps its own parameters: {owned == {id(p) for p in m.parameters()}}")
