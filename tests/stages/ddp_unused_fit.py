"""A fit of the tiny pre-training stage on 2 DDP processes (CPU, gloo) where each batch lacks a data
kind: understanding only, generation only, or text only, the ranks holding different kinds on the same
step. Every rank writes ``losses-<rank>.json`` ([global_step, loss] per step) into ``--out``.

    python tests/stages/ddp_unused_fit.py --steps 6 --out DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from torch.utils.data import DataLoader, Dataset

from jf_lightning.models.config import resolve_config
from jf_lightning.stages import PretrainingStage
from tests.models.builders import gen_sample, pack_rows, text_sample, und_sample

KINDS = ("und", "gen", "text", "gen")  # batch i holds KINDS[i % 4]: rank 0 takes even i, rank 1 odd i


class OneKindBatches(Dataset):
    def __init__(self, n: int):
        self.cfg, self.n = resolve_config("tiny", None, None), n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        cfg, g = self.cfg, torch.Generator().manual_seed(i)
        kind, size = KINDS[i % len(KINDS)], self.cfg.image_size
        if kind == "und":
            rows = [[und_sample(cfg.num_und_tokens, question=[20, 21, 22], answer=[30, 31])]]
        elif kind == "gen":
            rows = [[gen_sample([50, 51, 52], cfg.num_gen_tokens)]]
        else:
            rows = [[text_sample([40, 41, 42, 43])]]
        n_und, n_gen = int(kind == "und"), int(kind == "gen")
        batch = pack_rows(rows, 2 + max(cfg.num_und_tokens, cfg.num_gen_tokens) + 10,
                          und_pixels=torch.rand(n_und, 3, size, size, generator=g) * 2 - 1,
                          gen_pixels=torch.rand(n_gen, 3, size, size, generator=g) * 2 - 1)  # fmt: skip
        batch.batch_index = i
        return batch


class RecordLosses(Callback):
    def __init__(self, out: Path):
        self.out, self.losses = out, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append([trainer.global_step, float(outputs["loss"])])

    def on_train_end(self, trainer, pl_module):
        (self.out / f"losses-{trainer.global_rank}.json").write_text(json.dumps(self.losses))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    seed_everything(0)
    torch.set_num_threads(1)
    stage = PretrainingStage(preset="tiny", lr=1e-3, warmup_steps=1)
    loader = DataLoader(OneKindBatches(2 * args.steps), batch_size=None)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=args.steps, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[RecordLosses(args.out)])  # fmt: skip
    trainer.fit(stage, loader)


if __name__ == "__main__":
    main()
