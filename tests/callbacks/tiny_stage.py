"""The tiny model and a placeholder datamodule for running an evaluation callback in a real Trainer: the
callbacks draw their own inputs (prompts, questions), so the batches are placeholders and the stage has no
validation loss; the datamodule carries the shapes tokenizer and template the callbacks read."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from jf_lightning.shapes.tokenizer import build_shapes_tokenizer
from jf_lightning.stages.base import JanusFlowStage


class TinyStage(JanusFlowStage):
    """Its training loss moves one generation weight only, so a fit's steps change the EMA's weights."""

    def training_step(self, batch, batch_idx):
        return self.model.vision_gen_dec_aligner.weight.square().mean()

    def validation_step(self, batch, batch_idx):
        pass


class TinyData(pl.LightningDataModule):
    """``train_rows`` / ``val_rows`` placeholder batches of one row each."""

    def __init__(self, train_rows: int = 2, val_rows: int = 1):
        super().__init__()
        self.tokenizer, self.template = build_shapes_tokenizer(), "pretrain"
        self.train_rows, self.val_rows = train_rows, val_rows

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(self.train_rows, 1)), batch_size=1)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(self.val_rows, 1)), batch_size=1)
