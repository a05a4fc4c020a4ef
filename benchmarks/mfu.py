"""MFU, peak memory and step time of the stage 2 training step at the 1.3B preset on one GPU, without and
with activation checkpointing, same run.

    python -m benchmarks.mfu [--tokens 4096] [--rows 1] [--steps 10]          (a CUDA GPU; from the repo root)
    python -m benchmarks.mfu --preset tiny --tokens 256 --rows 2 --steps 2     (CPU dry run)

The stage is PretrainingStage (LLM and adapters trained, SigLIP and the VAE frozen) at random init
(every ``source`` None: no downloads), bf16 autocast, fused AdamW; the batch a synthetic packed one of
``rows`` rows of ``tokens`` tokens cycling understanding (1 + 576 image tokens, a 16-token question and
answer), generation (a 16-token prompt, 1 + 576 latent tokens) and 64-token text samples, padded at the
end. MFU is the analytic model FLOPs of the step (``jf_lightning/models/flops.py``: sample tokens,
per-sample attention, no recomputation) over the step time and the GPU's dense bf16 peak
(``--peak-flops`` or the table of ``callbacks/throughput.py``). Activation checkpointing wraps every
block (LLM decoder layers, SigLIP blocks, ConvNeXt blocks) as the FSDP2 path does
(``jf_lightning.parallel.fsdp.shard_blocks`` with torch's composable ``checkpoint``). Without a GPU and
without ``--preset tiny`` it says so and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import time
import warnings

import torch
from torch.distributed._composable import checkpoint

from jf_lightning.batch import IGNORE_INDEX, PackedBatch
from jf_lightning.callbacks.throughput import default_peak_flops
from jf_lightning.models.config import JanusFlowConfig, preset
from jf_lightning.models.flops import FlopModel
from jf_lightning.parallel.fsdp import shard_blocks
from jf_lightning.stages import PretrainingStage

QA, PROMPT, TEXT = 16, 16, 64  # question/answer, prompt and text sample lengths


def synthetic_batch(cfg: JanusFlowConfig, tokens: int, rows: int, seed: int = 0) -> PackedBatch:
    """Rows of ``tokens`` packed und / gen / text samples (in that cycle, while they fit), then padding."""
    g = torch.Generator().manual_seed(seed)
    vocab = cfg.llm.vocab_size
    ids = torch.randint(10, vocab, (rows, tokens), generator=g)
    pos = torch.zeros(rows, tokens, dtype=torch.long)
    seg = torch.zeros(rows, tokens, dtype=torch.long)
    labels = torch.full((rows, tokens), IGNORE_INDEX)
    und_slots, gen_slots = [], []
    kinds = [k for k, on in (("und", cfg.has_understanding), ("gen", cfg.generation), ("text", True)) if on]
    lengths = {"und": 2 + cfg.num_und_tokens + 2 * QA, "gen": 2 + PROMPT + cfg.num_gen_tokens, "text": TEXT}
    for r in range(rows):
        col = 0
        for sample, kind in enumerate(itertools.cycle(kinds), start=1):
            n = lengths[kind]
            if col + n > tokens:
                break
            pos[r, col : col + n], seg[r, col : col + n] = torch.arange(n), sample
            if kind == "und":  # BOS, begin + T_und features, question, answer (the targets)
                und_slots.append((r, col + 1))
                labels[r, col + n - QA - 1 : col + n - 1] = ids[r, col + n - QA : col + n]
            elif kind == "gen":  # BOS, prompt, time token + T_gen latents
                gen_slots.append((r, col + 1 + PROMPT))
            else:
                labels[r, col : col + n - 1] = ids[r, col + 1 : col + n]
            col += n
        pos[r, col:] = torch.arange(tokens - col)
    size = cfg.image_size
    return PackedBatch(
        input_ids=ids,
        position_ids=pos,
        segment_ids=seg,
        labels=labels,
        key_mask=torch.ones(rows, tokens, dtype=torch.bool),
        und_pixels=torch.rand(len(und_slots), 3, size, size, generator=g) * 2 - 1,
        und_slots=torch.tensor(und_slots, dtype=torch.long).reshape(-1, 2),
        gen_pixels=torch.rand(len(gen_slots), 3, size, size, generator=g) * 2 - 1,
        gen_slots=torch.tensor(gen_slots, dtype=torch.long).reshape(-1, 2),
        gen_prompt_dropped=torch.zeros(len(gen_slots), dtype=torch.bool),
    )


def measure(name: str, batch: PackedBatch, device: torch.device, ckpt: bool, steps: int, warmup: int) -> dict:
    """Mean step time, peak memory and the step's analytic FLOPs of a fresh stage on ``batch``."""
    cfg = preset(name)
    cfg.llm.source = cfg.siglip.source = cfg.vae.source = None
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "starts from random init": the point here
        stage = PretrainingStage(preset=name, config=cfg)
        stage.configure_model()
    stage.to(device).train()
    if ckpt:
        for block in shard_blocks(stage.model):
            checkpoint(block)
    params = [p for p in stage.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), fused=True)
    batch = batch.to(device)
    cuda = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
        with autocast:
            loss = stage.compute_losses(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    memory = torch.cuda.max_memory_allocated(device) if cuda else None
    flops = FlopModel.from_model(stage.model).step(batch)["total"]
    del stage, optimizer, params
    if cuda:
        torch.cuda.empty_cache()
    return {"seconds": seconds, "memory": memory, "flops": flops}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mfu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="janusflow-1.3b", help="model preset (tiny: a CPU dry run)")
    parser.add_argument("--tokens", type=int, default=4096, help="packed tokens per row")
    parser.add_argument("--rows", type=int, default=1, help="rows per micro-batch")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-flops", type=float, default=None, help="the device's peak FLOP/s for MFU")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and args.preset != "tiny":
        print(
            f"benchmarks.mfu: no CUDA GPU here; the {args.preset} step needs one (--preset tiny: a CPU dry run)"
        )
        sys.exit(0)
    peak = args.peak_flops or default_peak_flops(device)
    cfg = preset(args.preset)
    batch = synthetic_batch(cfg, args.tokens, args.rows)
    real = int((batch.segment_ids > 0).sum())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{args.preset} stage 2 step on {where}: {args.rows} x {args.tokens} tokens ({real} in samples: "
          f"{batch.num_und} und, {batch.num_gen} gen images), peak {peak or 'unknown'} FLOP/s")  # fmt: skip
    print("| activation ckpt | step ms | tokens/s | model TFLOP/s | MFU | peak memory GiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for ckpt in (False, True):
        r = measure(args.preset, batch, device, ckpt, args.steps, args.warmup)
        tflops = r["flops"] / r["seconds"] / 1e12
        mfu = f"{r['flops'] / r['seconds'] / peak:.3f}" if peak else "-"
        memory = f"{r['memory'] / 1024**3:.2f}" if r["memory"] is not None else "-"
        print(f"| {'yes' if ckpt else 'no'} | {r['seconds'] * 1000:.1f} | {real / r['seconds']:.0f} | "
              f"{tflops:.4g} | {mfu} | {memory} |")  # fmt: skip


if __name__ == "__main__":
    main()
