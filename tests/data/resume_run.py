"""A small fit on the real DataModule, for the kill-and-resume test (``test_resume.py``): each rank writes
one JSON line per step (global step, batch index, sample keys, loss); ``--kill-at`` SIGKILLs the whole
run (every rank, loader workers included) when that step is about to start, as ``kill -9`` would.

    python tests/data/resume_run.py --shards DIR --tokenizer DIR --out DIR --devices 2 --steps 7 [--kill-at 5] [--ckpt PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from jf_lightning.data.datamodule import JanusFlowDataModule
from jf_lightning.data.sources import SourceConfig


class Model(pl.LightningModule):
    """A loss that depends on every token and image of the batch and on trained weights."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(256, 8)
        self.head = torch.nn.Linear(8 + 3, 1)

    def training_step(self, batch, batch_idx):
        tokens = self.embed(batch.input_ids).mean(dim=(0, 1))  # (8,)
        pixels = batch.und_pixels.mean(dim=(0, 2, 3)) if batch.num_und else torch.zeros(3)  # (3,)
        return (self.head(torch.cat([tokens, pixels])) - 1.0).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


class StepLog(Callback):
    def __init__(self, out: Path, kill_at: int | None):
        self.out, self.kill_at = out, kill_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.kill_at:
            os.killpg(os.getpgid(0), signal.SIGKILL)  # the run's own session: the test started it alone

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        record = {"step": trainer.global_step - 1, "batch": batch.batch_index, "keys": batch.sample_keys,
                  "loss": float(outputs["loss"])}  # fmt: skip
        with open(self.out / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--shards", "--tokenizer", "--out"):
        parser.add_argument(name, required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--ckpt")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(0)
    torch.set_num_threads(1)
    shards = Path(args.shards)
    dm = JanusFlowDataModule(
        sources=[SourceConfig(str(shards / f"{kind}-*.tar"), kind) for kind in ("und", "gen", "text")],
        tokenizer=args.tokenizer, image_size=8, num_und_tokens=4, num_gen_tokens=4,
        ratio_schedule=[(0, (2, 1, 1)), (3, (1, 2, 1))], batch_size=4, seq_len=48, num_workers=2, seed=5,
    )  # fmt: skip
    trainer = pl.Trainer(
        accelerator="cpu", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto",
        max_steps=args.steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=2, save_top_k=-1),
                   StepLog(out, args.kill_at)],
    )  # fmt: skip
    trainer.fit(Model(), datamodule=dm, ckpt_path=args.ckpt)


if __name__ == "__main__":
    main()
