"""One training step of the embedded default (tiny preset, PretrainingStage, AdamW) on packed batches of
the shapes world, in fp32 and under bf16 autocast (``trainer.precision: bf16-mixed``), same run.

    python -m benchmarks.train_step [--steps 20] [--mix 30,62,8]   (from the repository root)

It writes a small shapes world (32 px, as tiny.yaml) into a temporary directory, so it needs nothing
else. Prints the mean wall time of forward + backward + optimizer step over the same batches per
precision, and the bf16 / fp32 ratio. On avx512_bf16 CPUs the matrix products (half of an fp32 step)
get faster; elsewhere bf16 may be slower. The stage runs with ``cpu_kernels=True`` (jf_lightning/kernels),
as tiny.yaml trains.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import tempfile
import time
from pathlib import Path

import torch

from jf_lightning.data.datamodule import JanusFlowDataModule
from jf_lightning.data.sources import SourceConfig
from jf_lightning.shapes.shards import write_shapes_world
from jf_lightning.stages import PretrainingStage

KINDS = ("und", "gen", "text")


def shapes_batches(root: Path, mix: tuple[float, float, float], n: int) -> list:
    """``n`` packed training batches of tiny.yaml's shape (16 samples, rows of 256 tokens)."""
    write_shapes_world(root, seed=0, train_samples=400, val_samples=0, image_size=32, image_after_question=1.0)
    dm = JanusFlowDataModule(
        sources=[SourceConfig(str(root / kind / "train-*.tar"), kind) for kind in KINDS if mix[KINDS.index(kind)]],
        tokenizer=str(root / "tokenizer"),
        image_size=32,
        num_und_tokens=64,
        num_gen_tokens=64,
        ratio_schedule=[(0, mix)],
        batch_size=16,
        seq_len=256,
        num_workers=0,
    )
    dm.setup("fit")
    return list(itertools.islice(iter(dm.train_dataloader()), n))


def mean_step_seconds(
    batches: list, bf16: bool, warmup: int = 3, attn_implementation: str | None = None, cpu_kernels: bool = True
) -> float:
    """A fresh tiny stage (tiny.yaml's loss weights) trained on ``batches``; the first ``warmup`` untimed.
    ``cpu_kernels`` switches the CPU kernels on (``use_cpu_kernels``); ``attn_implementation`` then swaps the
    LLM's attention (a transformers name such as "sdpa")."""
    torch.manual_seed(0)
    stage = PretrainingStage(preset="tiny", lr=2e-3, rf_weight=60.0, repa_weight=60.0, cpu_kernels=cpu_kernels)
    stage.configure_model()
    if attn_implementation is not None:
        stage.model.language_model.set_attn_implementation(attn_implementation)
    stage.train()
    optimizer = torch.optim.AdamW([p for p in stage.parameters() if p.requires_grad], lr=2e-3, betas=(0.9, 0.95))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    start = 0.0
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        with autocast:
            loss = stage.compute_losses(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / (len(batches) - warmup)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20, help="timed steps per precision")
    parser.add_argument("--mix", default="30,62,8", help="und,gen,text ratio of the batches (tiny.yaml's after step 700)")
    args = parser.parse_args()
    mix = tuple(float(x) for x in args.mix.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        batches = shapes_batches(Path(tmp) / "shapes", mix, args.steps + 3)
    t_fp32 = mean_step_seconds(batches, bf16=False)
    t_bf16 = mean_step_seconds(batches, bf16=True)
    tokens = sum(int(b.key_mask.sum()) for b in batches) / len(batches)
    print(f"threads={torch.get_num_threads()} mix und:gen:text={args.mix} batch=16 samples (~{tokens:.0f} tokens)")
    print(f"fp32 step:                {t_fp32 * 1000:8.1f} ms (mean of {args.steps})")
    print(f"bf16 autocast step:       {t_bf16 * 1000:8.1f} ms")
    print(f"ratio bf16 / fp32:        {t_bf16 / t_fp32:8.2f}x")


if __name__ == "__main__":
    main()
