"""Save a checkpoint, resume from it, and continue bit for bit (about 2 s on CPU).

The wrapper's state dict is the inner optimizer's with one more entry, ``"gxd_reset"``.
Shown on docs/howto/wrap.md; run it with ``python examples/wrap_checkpoint.py``.
"""

import tempfile
from pathlib import Path

import torch
from torch import nn

from gxd_optim import GXDReset


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 5)
    )


def train(model: nn.Module, opt: GXDReset, batches: list) -> None:
    for x, y in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


torch.manual_seed(0)
inputs = torch.randn(300, 64, 20)
batches = [(x, x[:, :5].argmax(1)) for x in inputs]

model = make_model()
opt = GXDReset(torch.optim.AdamW(model.parameters(), lr=1e-3), model)
train(model, opt, batches[:200])
path = Path(tempfile.gettempdir()) / "gxd_checkpoint.pt"
torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, path)

# Later, in a new process: build the model and the wrapper as before, then load both.
checkpoint = torch.load(path)
resumed = make_model()
resumed.load_state_dict(checkpoint["model"])
resumed_opt = GXDReset(torch.optim.AdamW(resumed.parameters(), lr=1e-3), resumed)
resumed_opt.load_state_dict(checkpoint["opt"])  # no forward pass needed first

train(model, opt, batches[200:])  # the uninterrupted run
train(resumed, resumed_opt, batches[200:])  # the resumed run, on the same batches
same = all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters(), strict=True))
print(f"resets {opt.reset_counts} and {resumed_opt.reset_counts}")
print(f"resumed run bit for bit: {same}")
path.unlink()
