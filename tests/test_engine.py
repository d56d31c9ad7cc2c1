"""spared_lib.engine: the trainer every training loop of the library uses."""
import numpy as np
import pytest
import torch

from spared_lib.engine import MAX_STEPS_ENV, make_trainer


class _Quadratic:
    """A one-parameter LightningModule whose validation value is known at every step."""

    @staticmethod
    def make(log_at_epoch_end: bool):
        import lightning.pytorch as pl

        class M(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.tensor([4.0]))
                self.seen = []

            def training_step(self, batch, batch_idx):
                return (self.w ** 2).sum()

            def validation_step(self, batch, batch_idx):
                v = (self.w.detach() ** 2).sum()
                self.seen.append((self.trainer.global_step, float(v)))
                if not log_at_epoch_end:
                    self.log("val_mse", v, on_epoch=True)

            def on_validation_epoch_end(self):
                if log_at_epoch_end:
                    self.log("val_mse", torch.tensor(self.seen[-1][1]))

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        return M()


def _loader(n=64):
    ds = torch.utils.data.TensorDataset(torch.zeros(n, 1))
    return torch.utils.data.DataLoader(ds, batch_size=1)


@pytest.mark.parametrize("log_at_epoch_end", [False, True])
def test_history_records_each_validation_at_its_own_step(tmp_path, monkeypatch, log_at_epoch_end):
    monkeypatch.delenv(MAX_STEPS_ENV, raising=False)
    module = _Quadratic.make(log_at_epoch_end)
    run = make_trainer(12, device="cpu", val_every=3, out_dir=tmp_path, progress=False)
    run.fit(module, _loader(), _loader(1))
    hist = run.history.frame()
    got = hist.dropna(subset=["val_mse"])[["step", "val_mse"]].to_numpy()
    want = np.array(module.seen)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[:, 0].tolist() == [3, 6, 9, 12]
    assert hist["train_loss"].notna().sum() == 12
    # w shrinks every step, so the last validation is the best, and load_best says so
    assert run.load_best(module) == 12
    assert float(run.checkpoint.best_model_score) == pytest.approx(want[-1, 1], rel=1e-6)


def test_step_cap_applies_to_the_trainer(tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_STEPS_ENV, "2")
    module = _Quadratic.make(False)
    run = make_trainer(1000, device="cpu", out_dir=tmp_path, progress=False)
    assert run.steps == 2
    run.fit(module, _loader(), _loader(1))
    assert run.trainer.global_step == 2
