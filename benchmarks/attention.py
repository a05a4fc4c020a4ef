"""The LLM's attention on CPU: transformers' SDPA against this project's matmul path (kernels/attention.py),
one layer at tiny.yaml's shapes and whole training steps, same run.

    python -m benchmarks.attention [--steps 20]   (from the repository root)

A tiny.yaml batch packs ~16 samples into ~5 rows of 256 tokens under a block-causal mask; the tiny LLM
has 4 heads of 32 dims. SDPA runs such masked attention on CPU through its flash kernel; the matmul
path computes the scores, softmax and weighted sum as three plain ops in the compute dtype. Prints the
milliseconds of each, forward + backward, in fp32 and under bf16 autocast, and the ratio: the project's
attention takes the matmul path under bf16 / fp16 only, as in fp32 the flash kernel is the faster.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from benchmarks.train_step import mean_step_seconds, shapes_batches
from jf_lightning.kernels.attention import ATTN_IMPLEMENTATION, matmul_attention
from jf_lightning.models.masking import packed_attention_mask


class _Layer(torch.nn.Module):
    """What transformers' attention functions read from their module."""

    num_key_value_groups = 1


def packed_rows(rows: int, length: int, seed: int = 0) -> torch.Tensor:
    """(rows, length) segment ids: each row cut into about three samples, as the packer fills them."""
    generator = torch.Generator().manual_seed(seed)
    cuts = torch.randint(40, 110, (rows, 3), generator=generator).cumsum(1).clamp(max=length)  # (rows, 3)
    positions = torch.arange(length)
    return 1 + (positions[None, :, None] >= cuts[:, None, :]).sum(-1)  # (rows, length)


def forced_matmul_path(module, query, key, value, mask, scaling):
    """The matmul path even where ``jf_sdpa_attention_forward`` would delegate (fp32), for comparison."""
    return matmul_attention(query, key, value, mask, scaling).transpose(1, 2), None


def layer_ms(attention, bf16: bool, rows: int = 5, heads: int = 4, length: int = 256, dim: int = 32,
             repeats: int = 30) -> float:
    """Median milliseconds of one attention call, forward + backward, on packed rows; fp32 inputs (as RoPE
    hands them over), under bf16 autocast or not."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(rows, heads, length, dim, requires_grad=True) for _ in range(3))
    segments = packed_rows(rows, length)
    mask = packed_attention_mask(segments, torch.ones_like(segments, dtype=torch.bool), torch.float32)  # (R, 1, L, L)
    layer = _Layer().train()
    times = []
    for _ in range(repeats + 3):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out, _ = attention(layer, q, k, v, mask, scaling=dim**-0.5)
        out.float().sum().backward()
        times.append(time.perf_counter() - start)
    return sorted(times[3:])[repeats // 2] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per attention")
    args = parser.parse_args()
    print(f"threads={torch.get_num_threads()}; one layer: 5 rows x 4 heads x 256 tokens x 32 dims, block-causal")
    for bf16, name in ((False, "fp32"), (True, "bf16 autocast")):
        sdpa = layer_ms(sdpa_attention_forward, bf16)
        ours = layer_ms(forced_matmul_path, bf16)
        print(f"{name:13s} layer fwd+bwd: sdpa {sdpa:6.2f} ms, matmul path {ours:6.2f} ms, ratio {ours / sdpa:.2f}x")
    with tempfile.TemporaryDirectory() as tmp:
        batches = shapes_batches(Path(tmp) / "shapes", (30, 62, 8), args.steps + 3)
    # both with the other CPU kernels on (use_cpu_kernels registers the matmul path), only attention differs
    sdpa = mean_step_seconds(batches, bf16=True, attn_implementation="sdpa")
    ours = mean_step_seconds(batches, bf16=True, attn_implementation=ATTN_IMPLEMENTATION)
    print(f"bf16 training step (tiny.yaml batch): sdpa {sdpa * 1000:6.1f} ms, matmul path {ours * 1000:6.1f} ms, "
          f"ratio {ours / sdpa:.2f}x")


if __name__ == "__main__":
    main()
