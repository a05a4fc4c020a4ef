"""The memory table: per-GPU memory of the 1.3B stage 2 step (PretrainingStage, janusflow-1.3b, random
init, built on the meta device: nothing allocated, nothing downloaded) at 4,096 packed tokens, for 8
and 64 GPUs, DDP against FSDP2, with and without activation checkpointing.

    python -m benchmarks.memory_table [--tokens 4096] [--gpus 8 64]   (from the repository root)

Parameters, gradients, optimizer and EMA come from the parameter counts of the built model and its
freeze policy (measured counts, bytes by precision: ``jf_lightning/models/memory.py``); activations are
an analytic estimate (marked ``~``). Prints a Markdown table in GiB.
"""

from __future__ import annotations

import argparse
import warnings

import torch

from jf_lightning.models.config import preset
from jf_lightning.models.memory import GIB, PackedStep, activation_bytes, state_bytes
from jf_lightning.stages import PretrainingStage


def build_on_meta(name: str = "janusflow-1.3b") -> PretrainingStage:
    cfg = preset(name)
    cfg.llm.source = cfg.siglip.source = cfg.vae.source = None
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")  # "starts from random init": the point here
        stage = PretrainingStage(preset=name, config=cfg)
        stage.configure_model()
    return stage


def table(stage: PretrainingStage, gpus: list[int], step: PackedStep) -> str:
    model = stage.model
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines = [
        (
            f"Stage 2, janusflow-1.3b: {total / 1e9:.3f} B parameters, {trained / 1e9:.3f} B trained (measured "
            f"on the meta device); {step.tokens} packed tokens per GPU, {step.gen_images} generation images, "
            f"{step.labelled} labelled tokens; GiB per GPU; ~ = estimated"
        ),
        "",
        "| GPUs | strategy | act. ckpt | params | grads | AdamW | EMA | activations | total |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n in gpus:
        for sharded in (False, True):
            states = state_bytes(model, n, sharded)
            for ckpt in (False, True):
                act = activation_bytes(model, step, ckpt)
                cells = [states[k] / GIB for k in ("params", "grads", "optimizer", "ema")]
                total_gib = sum(cells) + act / GIB
                lines.append(
                    f"| {n} | {'FSDP2' if sharded else 'DDP'} | {'yes' if ckpt else 'no'} | "
                    + " | ".join(f"{c:.2f}" for c in cells)
                    + f" | ~{act / GIB:.2f} | ~{total_gib:.2f} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_table")
    parser.add_argument("--tokens", type=int, default=4096, help="packed tokens per GPU per micro-step")
    parser.add_argument("--gen-images", type=int, default=3, help="generation samples among them")
    parser.add_argument("--labelled", type=int, default=512, help="tokens with an AR target among them")
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 64])
    args = parser.parse_args()
    print(table(build_on_meta(), args.gpus, PackedStep(args.tokens, args.gen_images, args.labelled)))


if __name__ == "__main__":
    main()
