"""GXDReset in Lightning: a LightningModule whose ``training_step`` calls a submodule (a few s).

Needs ``pip install lightning``. ``configure_optimizers`` wraps the module itself; the training step
never calls its ``forward``, only ``self.net(x)``, and the wrapper finds the units in the first
training pass. Lightning's checkpoints hold the wrapper's state (it is part of the optimizer's
``state_dict``), so ``trainer.fit(..., ckpt_path=...)`` resumes it. Run it with ``python
examples/lightning_submodule.py``.
"""

from __future__ import annotations

import tempfile
import warnings

import lightning as L
import torch
from torch import Tensor, nn

from gxd_optim import GXDReset


# --8<-- [start:module]
class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)
        )

    def training_step(self, batch: tuple[Tensor, Tensor], index: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> GXDReset:
        inner = torch.optim.Adam(self.parameters(), lr=1e-2)
        return GXDReset(inner, self, replacement_rate=0.05, maturity=5)


# --8<-- [end:module]


def data(seed: int = 0) -> torch.utils.data.DataLoader[tuple[Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(512, 6, generator=g), torch.randint(0, 3, (512,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def trainer(steps: int, root: str) -> L.Trainer:
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def fit(steps: int, root: str, ckpt_path: str | None = None) -> tuple[L.Trainer, GXDReset]:
    """Train a fresh classifier up to step ``steps`` (from ``ckpt_path`` if given)."""
    torch.manual_seed(0)
    run = trainer(steps, root)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")  # its advice on DataLoader workers
        run.fit(Classifier(), data(), ckpt_path=ckpt_path)
    opt = run.optimizers[0]
    assert isinstance(opt, GXDReset)
    return run, opt


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run, opt = fit(40, tmp)
        print(f"{opt.steps} steps, resets {opt.reset_counts}")
        run.save_checkpoint(f"{tmp}/step40.ckpt")
        _, resumed = fit(60, tmp, ckpt_path=f"{tmp}/step40.ckpt")
        print(f"resumed: {resumed.steps} steps, resets {resumed.reset_counts}")


if __name__ == "__main__":
    main()
