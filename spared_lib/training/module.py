"""The LightningModule that trains any :class:`~spared_lib.models.base.SpotModel`.

Introduced in ``notebooks/04_patch_models.py``.

Lightning owns the loop (devices, mixed precision, DDP, checkpointing, progress bar);
this module only says what a step is: augment on the device, the model's own loss,
and the validation MSE over observed entries that selects the checkpoint.
"""
from __future__ import annotations

import lightning.pytorch as pl
import torch
from torchmetrics import Metric

from spared_lib.preprocessing import dihedral
from .data import to_model_input


class MaskedMSE(Metric):
    """Mean squared error over observed entries, summed correctly across DDP processes."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("sse", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
        m = mask.to(torch.float64)
        self.sse += (((pred.double() - target.double()) ** 2) * m).sum()
        self.n += m.sum()

    def compute(self) -> torch.Tensor:
        return (self.sse / self.n.clamp_min(1.0)).float()


@torch.no_grad()
def predict_batch(model, batch: dict, tta: bool) -> torch.Tensor:
    """The model's prediction for a normalised batch, averaged over the 8 symmetries if ``tta``."""
    if not tta:
        return model.predict(batch).float()
    views = dihedral(batch["image"])  # (8, B, C, H, W), identity first
    return torch.stack([model.predict({**batch, "image": v}).float() for v in views]).mean(0)


class SpotModule(pl.LightningModule):
    """Wraps a SpotModel for :class:`lightning.pytorch.Trainer`.

    Parameters
    ----------
    model
        The :class:`~spared_lib.models.base.SpotModel`.
    lr
        Learning rate of the model's optimiser (``model.optimizer``: Adam, AdamW or
        SGD with momentum 0.9).
    tta
        Test-time averaging at validation; ``None`` follows ``model.test_time_augmentation``.
    weight_decay
        Passed to the optimiser (0 like the originals' defaults, except AdamW's 1e-2).
    observed_only_loss
        Train on observed entries only: our option, not an original's (SpaRED's and SEPAL's
        trainers use ``torch.nn.MSELoss`` over the whole target). Off by default: the loss then
        covers every entry of the target, so median- and SpaCKLE-completed targets train
        differently; metrics always use observed entries only.
    """

    def __init__(self, model, lr: float, tta: bool | None = None, weight_decay: float | None = None,
                 observed_only_loss: bool = False):
        super().__init__()
        self.model = model
        self.observed_only_loss = bool(observed_only_loss)
        self.lr = float(lr)
        self.tta = model.test_time_augmentation if tta is None else bool(tta)
        self.weight_decay = weight_decay
        self.val_mse = MaskedMSE()

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        # augmentation only in training mode; Lightning switches to eval mode for validation
        return to_model_input(batch, augment=self.training)

    def training_step(self, batch, batch_idx):
        if self.observed_only_loss:
            batch = {**batch, "loss_mask": batch["mask"]}
        pred = self.model(batch).float()  # loss in float32 even under mixed precision
        loss = self.model.loss(batch, pred)
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["target"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        pred = predict_batch(self.model, batch, self.tta)
        self.val_mse.update(pred, batch["target"], batch["mask"])
        self.log("val_mse", self.val_mse, prog_bar=True, on_step=False, on_epoch=True,
                 batch_size=batch["target"].shape[0])

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        name = getattr(self.model, "optimizer", "adam")
        if name == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay or 0.0)
        if name == "adamw":
            wd = 1e-2 if self.weight_decay is None else self.weight_decay
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=wd)
        if name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay or 0.0)
        raise ValueError(f"model.optimizer must be 'adam', 'adamw' or 'sgd', got {name!r}")
