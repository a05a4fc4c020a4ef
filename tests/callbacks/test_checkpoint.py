"""FinalStepCheckpoint: last.ckpt holds the step training stopped at, not the last periodic save."""

from __future__ import annotations

import itertools

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from jf_lightning.callbacks.checkpoint import FinalStepCheckpoint
from jf_lightning.callbacks.ema import EMA


class EndlessStream(IterableDataset):
    """Like the data module's streams: no epoch ever ends on its own."""

    def __iter__(self):
        return (torch.ones(2) for _ in itertools.count())


class Linear(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("max_steps", [5, 6])
def test_last_checkpoint_holds_the_final_step_with_the_ema_state(tmp_path, max_steps):
    checkpoint = FinalStepCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_last=True, save_top_k=0)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=max_steps, callbacks=[checkpoint, EMA(decay=0.9)], logger=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    module = Linear()
    trainer.fit(module, train_dataloaders=DataLoader(EndlessStream(), batch_size=4))
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["global_step"] == max_steps  # Lightning alone leaves step 3 here when max_steps is 5
    assert "current_model_state" in saved  # the live weights beside the averaged ones, as mid-run
    live = saved["current_model_state"]["layer.weight"]
    assert not torch.equal(live, saved["state_dict"]["layer.weight"])  # saved before train end merged them


def test_epoch_bounded_runs_keep_lightnings_saves(tmp_path):
    checkpoint = FinalStepCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_last=True, save_top_k=-1)
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=2, callbacks=[checkpoint], logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(Linear(), train_dataloaders=DataLoader(torch.ones(6, 2), batch_size=3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt", "last.ckpt"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 4


def test_final_step_save_is_not_overwritten_at_train_end(tmp_path):
    """No periodic save before max_steps: Lightning would write last.ckpt at train end, after the EMA
    merged the averages into the live weights; the final-step save keeps both."""
    checkpoint = FinalStepCheckpoint(dirpath=tmp_path, every_n_train_steps=10, save_last=True, save_top_k=0)
    saves = []

    class Count(pl.Callback):
        def on_save_checkpoint(self, trainer, pl_module, ckpt):
            saves.append(trainer.global_step)

    trainer = pl.Trainer(
        accelerator="cpu", max_steps=4, callbacks=[checkpoint, EMA(decay=0.9), Count()], logger=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(Linear(), train_dataloaders=DataLoader(EndlessStream(), batch_size=4))
    assert saves == [4] and checkpoint.last_model_path == str(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 4
    assert not torch.equal(saved["current_model_state"]["layer.weight"], saved["state_dict"]["layer.weight"])


def test_no_save_outside_fit(tmp_path):
    checkpoint = FinalStepCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=1, callbacks=[checkpoint], logger=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip

    class Validated(Linear):
        def validation_step(self, batch, batch_idx):
            return self.layer(batch).sum()

    trainer.validate(Validated(), DataLoader(torch.ones(4, 2), batch_size=2))
    checkpoint.on_train_epoch_end(trainer, trainer.lightning_module)  # as if an epoch ended: not in fit
    assert not any(tmp_path.iterdir())
