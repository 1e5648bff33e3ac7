"""What discovery finds (docs/howto/architectures.md): eligible layers, their edges and consumers,
and the ways to name the layers yourself. Runs in about a second on CPU.

The page shows this program in order, section by section; run it with ``python
examples/architectures.py``.
"""

# --8<-- [start:layers]
import torch
from torch import nn

from gxd_optim import GXDReset

torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(3, 16, 3),  # '0'
    nn.BatchNorm2d(16),
    nn.ReLU(inplace=True),
    nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3),  # '4'
    nn.ReLU(),
    nn.AdaptiveAvgPool2d(2),
    nn.Flatten(),
    nn.Linear(128, 64),  # '8'
    nn.ReLU(),
    nn.Linear(64, 10),  # '10'
)
opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
model(torch.randn(8, 3, 32, 32))  # the first training forward pass finds the units

for name, info in opt.layers.items():
    print(name, info.num_units, info.consumers, info.norms)
for name, why in opt.skipped.items():
    print(f"skipped {name}: {why}")
# --8<-- [end:layers]

# --8<-- [start:edge]
print(opt.layers["4"].edges[0])
opt.close()  # before wrapping the same model again
# --8<-- [end:edge]

# --8<-- [start:exclude]
opt = GXDReset(torch.optim.Adam(model.parameters()), model, exclude=["4"])
model(torch.randn(8, 3, 32, 32))
print(list(opt.layers))
for name, why in opt.skipped.items():
    print(f"skipped {name}: {why}")
opt.close()
# --8<-- [end:exclude]

# --8<-- [start:explicit]
mixed = nn.Sequential(nn.Linear(16, 64), nn.LayerNorm(64), nn.Linear(64, 8))
explicit = GXDReset(torch.optim.Adam(mixed.parameters()), mixed, layers={"0": ["2"]})
print(explicit.layers["0"].consumers, dict(explicit.skipped))
# --8<-- [end:explicit]

# --8<-- [start:discover]
opt = GXDReset(torch.optim.Adam(model.parameters(), lr=1e-3), model)
opt.discover(torch.randn(2, 3, 32, 32))  # an example batch; nothing is recorded
print(list(opt.layers))
# --8<-- [end:discover]


# --8<-- [start:heads]
class MultiHead(nn.Module):
    """A shared body and one head per task; each forward pass calls one head."""

    def __init__(self, tasks: int = 2) -> None:
        super().__init__()
        self.body = nn.Linear(10, 32)
        self.heads = nn.ModuleList(nn.Linear(32, 2) for _ in range(tasks))

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.heads[task](torch.relu(self.body(x)))


learner = MultiHead()
found = GXDReset(torch.optim.Adam(learner.parameters()), learner)
found.discover(torch.randn(2, 10), task=0)  # calls heads.0 only
print(found.layers["body"].consumers)
for name, why in found.skipped.items():
    print(f"skipped {name}: {why}")
found.close()

named = GXDReset(
    torch.optim.Adam(learner.parameters()),
    learner,
    layers={"body": ["heads.0", "heads.1"]},
)
print(named.layers["body"].consumers)
# --8<-- [end:heads]
