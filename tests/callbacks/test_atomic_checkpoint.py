"""AtomicCheckpointIO: a save interrupted mid-write leaves the previous checkpoint whole and no temp file."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from jf_lightning.callbacks.atomic_checkpoint import AtomicCheckpointIO
from jf_lightning.cli import JanusFlowCLI
from tests.test_cli import TINY


class Linear(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_an_interrupted_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, plugins=[AtomicCheckpointIO()], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(Linear(), DataLoader(torch.ones(4, 2), batch_size=2))
    target = tmp_path / "ckpt" / "last.ckpt"
    trainer.save_checkpoint(target)
    good = torch.load(target, weights_only=True)
    assert good["global_step"] == 2 and oct(os.stat(target).st_mode & 0o777) == oct(0o666 & ~_umask())

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint(target)
    monkeypatch.undo()
    assert os.listdir(target.parent) == ["last.ckpt"]  # no temp file left behind
    again = torch.load(target, weights_only=True)
    assert torch.equal(again["state_dict"]["layer.weight"], good["state_dict"]["layer.weight"])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_the_cli_makes_saves_atomic(tmp_path):
    cli = JanusFlowCLI(
        args=["-c", str(TINY), "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"], run=False
    )
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
