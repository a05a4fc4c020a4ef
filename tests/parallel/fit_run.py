"""A short fit of the tiny pre-training stage on hand-laid packed batches, on one process (accumulating
the global batch), on 2 DDP processes or on 2 FSDP2 processes (CPU, gloo), for tests/parallel.

Every rank writes ``losses-<rank>.json`` ([global_step, micro-batch index, loss] per micro-batch) and
``val-losses-<rank>.json`` ([global_step, loss, whether every trained parameter was a sharded DTensor]
per validation, on the EMA averages), and rank 0 writes ``weights.pt``, the trained parameters after fit (the EMA averages, which the EMA callback
copies into the model at the end; gathered whole under FSDP2), into ``--out``.

    python tests/parallel/fit_run.py --mode fsdp --steps 20 --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer, seed_everything
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader

from jf_lightning.callbacks.checkpoint import FinalStepCheckpoint
from jf_lightning.callbacks.ema import EMA
from jf_lightning.parallel.strategy import FSDP2Strategy
from jf_lightning.stages import PretrainingStage
from tests.stages.conftest import tiny_batch

MICRO_BATCHES_PER_STEP = 2  # the global batch: one micro-batch per rank, or two accumulated on one process


class Stage(PretrainingStage):
    """Flow noise seeded by the micro-batch and the optimizer step, not by the rank (as the stage does):
    a global batch draws the same noise on one process as on two, and a resumed run as the first."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.recorded: list[list] = []
        self.recorded_val: list[list] = []

    def configure_model(self) -> None:
        if self.model is None:
            torch.manual_seed(0)  # the same initial weights on every rank and in every mode
        super().configure_model()

    def flow_generator(self, batch_index: int, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(1000 * self.global_step + 10 * batch_index + salt)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.recorded.append([self.global_step, batch.batch_index, loss.item()])
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        # on the EMA averages, which the EMA callback swaps in for validation; under FSDP2 the swap keeps
        # every trained parameter the DTensor shard it was
        sharded = all(
            isinstance(p, DTensor) and p.placements[0].is_shard()
            for p in self.parameters()
            if p.requires_grad
        )
        losses = self.compute_losses(batch, self.flow_generator(batch.batch_index, salt=1))
        self.recorded_val.append([self.global_step, losses["loss"].item(), sharded])


class Batches(LightningDataModule):
    """Micro-batch ``k`` of optimizer step ``s`` is batch ``2s + k``: rank ``k`` takes it on two processes.
    With ``repeat``, rank ``k`` always takes batch ``k`` (data whose position cannot matter on resume)."""

    def __init__(self, stage: Stage, steps: int, repeat: bool):
        super().__init__()
        self.cfg, self.steps, self.repeat = stage.model_config, steps, repeat

    def train_dataloader(self) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        count = self.steps * MICRO_BATCHES_PER_STEP
        ids = [i % MICRO_BATCHES_PER_STEP if self.repeat else i for i in range(count)][rank::world]
        return DataLoader([tiny_batch(self.cfg, seed=i, batch_index=i) for i in ids], batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader([tiny_batch(self.cfg, seed=100, batch_index=100)], batch_size=None)  # on every rank


class Hang(Callback):
    """Stops training at ``step`` (rank 0 writes ``hung`` into the output folder), to be killed there."""

    def __init__(self, step: int, out: Path):
        self.step, self.out = step, out

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            if trainer.is_global_zero:
                (self.out / "hung").write_text(str(self.step))
            time.sleep(600)


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["single", "ddp", "fsdp"], required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeat", action="store_true", help="every rank trains on one repeated batch")
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--hang-at", type=int, default=0)
    parser.add_argument("--ckpt-path", default=None)
    parser.add_argument("--decay", type=float, default=0.9)
    parser.add_argument("--validate-every", type=int, default=0, help="optimizer steps between validations")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seed_everything(0, verbose=False)
    torch.set_num_threads(1)

    stage = Stage(lr=1e-3, warmup_steps=1)
    callbacks = [EMA(decay=args.decay)]
    if args.checkpoint_every:
        callbacks.append(
            FinalStepCheckpoint(
                args.out / "checkpoints",
                every_n_train_steps=args.checkpoint_every,
                save_last=True,
                save_top_k=0,
            )
        )
    if args.hang_at:
        callbacks.append(Hang(args.hang_at, args.out))
    single = args.mode == "single"
    trainer = Trainer(
        accelerator="cpu", devices=1 if single else 2,
        strategy={"single": "auto", "ddp": "ddp", "fsdp": FSDP2Strategy()}[args.mode],
        accumulate_grad_batches=MICRO_BATCHES_PER_STEP if single else 1, max_steps=args.steps,
        callbacks=callbacks, logger=False, enable_checkpointing=bool(args.checkpoint_every),
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
        gradient_clip_val=1.0, default_root_dir=args.out, num_sanity_val_steps=0,
        limit_val_batches=1 if args.validate_every else 0,
        val_check_interval=args.validate_every * (MICRO_BATCHES_PER_STEP if single else 1) or None,
    )  # fmt: skip
    trainer.fit(stage, datamodule=Batches(stage, args.steps, args.repeat), ckpt_path=args.ckpt_path)

    (args.out / f"losses-{trainer.global_rank}.json").write_text(json.dumps(stage.recorded))
    (args.out / f"val-losses-{trainer.global_rank}.json").write_text(json.dumps(stage.recorded_val))
    with torch.no_grad():
        weights = {name: full(p.detach()).clone() for name, p in stage.named_parameters() if p.requires_grad}
    if trainer.is_global_zero:
        torch.save(weights, args.out / "weights.pt")


if __name__ == "__main__":
    main()
