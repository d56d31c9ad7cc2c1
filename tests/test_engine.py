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


class _Adam:
    """A LightningModule with Adam (whose state is twice the weights) and a known best step."""

    @staticmethod
    def make():
        import lightning.pytorch as pl

        class M(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.full((1000,), 4.0))

            def training_step(self, batch, batch_idx):
                return (self.w ** 2).sum()

            def validation_step(self, batch, batch_idx):
                self.log("val_mse", (self.w.detach() ** 2).mean(), on_epoch=True)

            def configure_optimizers(self):
                return torch.optim.Adam(self.parameters(), lr=0.1)

        return M()


def test_checkpoints_hold_weights_only_and_are_streamed_to_disk(tmp_path, monkeypatch):
    """A paper-size Hist2ST's checkpoint with Adam's state is 10 GiB, and Lightning's default IO
    builds it in an in-memory buffer and then copies that buffer: the rehearsal's CPU run was
    killed for memory at its first checkpoint. The trainer keeps weights only and torch.save
    writes straight to a file."""
    import io

    monkeypatch.delenv(MAX_STEPS_ENV, raising=False)
    targets = []
    real_save = torch.save

    def recording_save(obj, f, *a, **kw):
        targets.append(f)
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", recording_save)
    module = _Adam.make()
    run = make_trainer(4, device="cpu", val_every=2, out_dir=tmp_path, progress=False)
    run.fit(module, _loader(), _loader(1))
    assert targets and not any(isinstance(f, io.BytesIO) for f in targets), targets
    state = torch.load(run.checkpoint.best_model_path, map_location="cpu", weights_only=False)
    assert "optimizer_states" not in state and set(state["state_dict"]) == {"w"}
    assert state["global_step"] == 4
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    before = module.w.detach().clone()
    with torch.no_grad():
        module.w.zero_()
    assert run.load_best(module) == 4
    torch.testing.assert_close(module.w.detach(), before)


def test_an_interrupted_checkpoint_save_leaves_the_previous_one(tmp_path, monkeypatch):
    from spared_lib.engine import _checkpoint_io

    io_ = _checkpoint_io()
    path = tmp_path / "m-best-step=2.ckpt"
    io_.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)

    def dying_save(obj, f, *a, **kw):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io_.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    torch.testing.assert_close(torch.load(path, weights_only=False)["state_dict"]["w"], torch.ones(3))
