"""Lightning: GXDReset returned from ``configure_optimizers`` trains and resets."""

from __future__ import annotations

import pytest
import torch
from requirements import needs
from torch import Tensor, nn

from gxd_optim import GXDReset

L = needs("lightning")


class Module(L.LightningModule):  # type: ignore[misc, name-defined]
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)
        )
        self.gxd: GXDReset | None = None

    def training_step(self, batch: tuple[Tensor, Tensor], index: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> dict[str, object]:
        inner = torch.optim.Adam(self.parameters(), lr=1e-2)
        self.gxd = GXDReset(inner, self.net, replacement_rate=0.1, maturity=2)
        scheduler = torch.optim.lr_scheduler.StepLR(self.gxd, 5, gamma=0.5)
        return {"optimizer": self.gxd, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_lightning_trains_with_resets() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(320, 6, generator=g), torch.randint(0, 3, (320,), generator=g)
    )
    module = Module()
    trainer = L.Trainer(
        max_steps=15,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=16))
    opt = module.gxd
    assert opt is not None
    assert opt.steps == 15
    assert sum(opt.reset_counts.values()) > 0
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**3)
