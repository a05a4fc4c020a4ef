"""Sampling speed of the tiny preset (what the GenEval callback and the sample grids spend), fp32 against
bf16 autocast, with frozen weights as the EMA copy has them; and the ConvNeXt-block pitfall behind it.

    python -m benchmarks.sampling [--images 64] [--steps 20]   (from the repository root)

On CPU, ``F.linear`` over a permuted (non-contiguous) 4-D input, with a weight that needs no grad,
runs under bf16 autocast as a batched matmul that first copies the weight once per image row. The
generation codec's ConvNeXt block used to feed its first linear that way, and bf16 sampling was ~2x
slower than fp32 (the demo's validation: 1 min 29 s). The block now convolves a channels-last map,
whose permute is contiguous; the second part prints both layouts of one linear so the pitfall stays
measurable.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from jf_lightning.inference.generate import generate_images
from jf_lightning.models.config import preset
from jf_lightning.models.gen_codec import ConvNeXtBlock
from jf_lightning.models.janusflow import JanusFlow


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def frozen(module: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no grads, like the EMA copy that sampling uses."""
    for param in module.parameters():
        param.requires_grad_(False)
    return module.eval()


def sampling_seconds(model: JanusFlow, images: int, steps: int, bf16: bool) -> float:
    prompts = [[1, 5, 6, 7, 8]] * images  # token ids; an untrained model draws noise either way
    start = time.perf_counter()
    with autocast(bf16):
        generate_images(model, prompts, list(range(images)), 0, steps, 3.0, images)
    return time.perf_counter() - start


@torch.no_grad()
def linear_seconds(block: ConvNeXtBlock, features: torch.Tensor, bf16: bool, repeats: int = 5) -> float:
    """The block's first linear on ``features`` (N, H, W, C), whatever its memory layout."""
    with autocast(bf16):
        block.channelwise_linear_1(features)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            block.channelwise_linear_1(features)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64, help="images per sampling call (CFG doubles the batch)")
    parser.add_argument("--steps", type=int, default=20, help="Euler steps")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = frozen(JanusFlow(preset("tiny")))
    sampling_seconds(model, 4, 2, bf16=True)  # warm-up
    fp32, bf16 = (sampling_seconds(model, args.images, args.steps, b) for b in (False, True))
    print(f"threads={torch.get_num_threads()}: {args.images} images x {args.steps} Euler steps at CFG 3")
    print(f"fp32 sampling:            {fp32:8.2f} s")
    print(f"bf16 autocast sampling:   {bf16:8.2f} s   ratio bf16 / fp32 {bf16 / fp32:.2f}x")

    width = 2 * preset("tiny").gen_codec.width  # the decoder's blocks
    block = frozen(ConvNeXtBlock(width, 128, 1e-6))
    permuted = torch.randn(2 * args.images, width, 8, 8).permute(0, 2, 3, 1)  # (N, 8, 8, C), as a conv leaves it
    contiguous = permuted.contiguous()
    slow, fast = (linear_seconds(block, x, bf16=True) for x in (permuted, contiguous))
    print(f"bf16 linear {width}->{4 * width} on {tuple(permuted.shape)}: permuted input {slow * 1000:.1f} ms, "
          f"contiguous {fast * 1000:.1f} ms   ratio {slow / fast:.1f}x")


if __name__ == "__main__":
    main()
