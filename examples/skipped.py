"""Which layers are skipped, and why (docs/howto/skipped.md): a residual block with a LayerNorm, the
kind of model where most layers are skipped. Runs in about a second on CPU.

The page shows this program in order, section by section; run it with ``python
examples/skipped.py``.
"""

# --8<-- [start:model]
import torch
from torch import nn

from gxd_optim import GXDReset


class Block(nn.Module):
    """A pre-norm residual MLP block, as in a Transformer, and an output layer."""

    def __init__(self, width: int = 32, hidden: int = 64, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Linear(8, width)
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.mlp(self.norm(x))
        return self.head(x)


# --8<-- [end:model]

# --8<-- [start:skipped]
torch.manual_seed(0)
model = Block()
opt = GXDReset(torch.optim.Adam(model.parameters()), model)
opt.discover(torch.randn(4, 8))  # or after the first training forward pass
for name, why in opt.skipped.items():
    print(f"{name}: {why}")
print("eligible:", list(opt.layers))
# --8<-- [end:skipped]
