"""Wrap your optimizer: a classifier trained from a DataLoader of images (about 5 s on CPU).

The dataset is random 28x28 images, labelled by which of their first ten pixels is brightest,
standing in for yours (MNIST, say): replace ``dataset`` by your own. Shown on docs/howto/wrap.md;
run it with ``python examples/wrap.py``.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gxd_optim import GXDReset

torch.manual_seed(0)
images = torch.rand(2048, 1, 28, 28)
labels = images[:, 0, 0, :10].argmax(1)
dataset = TensorDataset(images, labels)  # stands for e.g. torchvision's MNIST
loader = DataLoader(dataset, batch_size=64, shuffle=True)

model = nn.Sequential(
    nn.Flatten(),  # [64, 1, 28, 28] -> [64, 784]
    nn.Linear(28 * 28, 256),
    nn.ReLU(),
    nn.Linear(256, 256),
    nn.ReLU(),
    nn.Linear(256, 10),
)
opt = GXDReset(torch.optim.AdamW(model.parameters(), lr=1e-3), model)

for epoch in range(5):
    for x, y in loader:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()  # the AdamW step, then resets of the cheapest mature units
    print(f"epoch {epoch}: loss {loss.item():.3f}, resets {opt.reset_counts}")

print(f"{opt.steps} steps; eligible layers {list(opt.layers)}")
