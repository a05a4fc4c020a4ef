"""One ``validate`` of the tiny model with the FID callback (and the CLIP score on its images), on
``--devices`` CPU processes (DDP over gloo when more than one); rank 0 writes the logged metrics as JSON.
Run as a script: Lightning's DDP launcher starts the other ranks by running it again."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for `tests.` imports

from jf_lightning.callbacks.fid import FIDCallback
from tests.callbacks.tiny_stage import TinyData, TinyStage


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ("--prompts", "--reference", "--extractors", "--cache", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--devices", type=int, default=1)
    args = p.parse_args()
    torch.manual_seed(0)  # the same random model on every rank
    stage = TinyStage(preset="tiny", lr=0.1, warmup_steps=1)
    stage.configure_model()
    fid = FIDCallback(
        args.prompts, args.reference, num_images=None, backend="torchmetrics", weights=args.extractors, dims=64,
        cache_dir=args.cache, clip_model=str(Path(args.extractors) / "clip"), steps=2, cfg_weight=2.0,
        batch_size=2, grid_images=4,
    )  # fmt: skip
    trainer = pl.Trainer(
        accelerator="cpu", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto",
        callbacks=[fid], logger=False, default_root_dir=Path(args.out).parent, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    (results,) = trainer.validate(stage, datamodule=TinyData(val_rows=2), verbose=False)
    if trainer.is_global_zero:
        Path(args.out).write_text(json.dumps({k: float(v) for k, v in results.items()}))


if __name__ == "__main__":
    main()
