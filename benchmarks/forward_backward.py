"""Forward + backward of the tiny model on a packed batch of 4 mixed samples (2 CPU cores).

    python -m benchmarks.forward_backward [--repeats 20]   (from the repository root)

Prints the median wall time of one training step's forward + backward, against the same step with
the generation samples removed (the baseline of a text-and-understanding batch) in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from jf_lightning.flow.rectified_flow import interpolate, repa_loss, rf_loss, velocity_target
from jf_lightning.models.config import tiny
from jf_lightning.models.janusflow import JanusFlow
from tests.models.builders import gen_sample, pack_rows, text_sample, und_sample


def mixed_batch(cfg, with_generation: bool = True):
    """Row 1: understanding + text; row 2: two generation samples (one with a dropped prompt)."""
    und = und_sample(cfg.num_und_tokens, list(range(20, 32)), [40, 41, 42])
    text = text_sample(list(range(50, 80)))
    rows = [[und, text]]
    n_gen = 0
    if with_generation:
        rows.append([gen_sample(list(range(60, 72)), cfg.num_gen_tokens),
                     gen_sample(list(range(60, 70)), cfg.num_gen_tokens, dropped=True)])
        n_gen = 2
    seq_len = max(sum(len(s.tokens) for s in row) for row in rows)
    size = cfg.image_size
    return pack_rows(rows, seq_len, torch.rand(1, 3, size, size) * 2 - 1, torch.rand(n_gen, 3, size, size) * 2 - 1)


def step(model, batch) -> None:
    x = model.vae.encode(batch.gen_pixels) if batch.num_gen else None
    t = torch.rand(batch.num_gen)
    noise = torch.randn_like(x) if x is not None else None
    out = model(batch, interpolate(x, noise, t) if x is not None else None, t)
    loss = out.ar_loss
    if batch.num_gen:
        loss = loss + rf_loss(out.velocity, velocity_target(x, noise)) + repa_loss(out.repa_pred, model.repa_targets(batch))
    loss.backward()
    model.zero_grad(set_to_none=True)


def median_seconds(model, batch, repeats: int) -> float:
    for _ in range(3):
        step(model, batch)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(model, batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = tiny()
    model = JanusFlow(cfg).train()
    mixed, baseline = mixed_batch(cfg), mixed_batch(cfg, with_generation=False)
    t_mixed = median_seconds(model, mixed, args.repeats)
    t_base = median_seconds(model, baseline, args.repeats)
    print(f"threads={torch.get_num_threads()} rows={mixed.num_rows} seq_len={mixed.seq_len} samples=4 (und, text, gen, gen-dropped)")
    print(f"forward+backward, 4 mixed samples:        {t_mixed * 1000:8.1f} ms (median of {args.repeats})")
    print(f"baseline, und + text only (2 samples):    {t_base * 1000:8.1f} ms")
    print(f"ratio mixed / baseline:                   {t_mixed / t_base:8.2f}x")
    print(f"bar (< 1 s): {'met' if t_mixed < 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
