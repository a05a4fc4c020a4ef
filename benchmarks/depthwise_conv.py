"""The ConvNeXt blocks' 7x7 depthwise conv on CPU, forward + backward, as tiny.yaml's generation
encoder (128 channels) and decoder (256) run it on a batch's images (8 x 8 maps, fp32, channels-last):
torch's conv2d (oneDNN's backward) against ``kernels.depthwise_conv``'s (a backward made of depthwise
forward convs), same run.

    python -m benchmarks.depthwise_conv [--repeats 50] [--images 10]   (from the repository root)
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
import torch.nn.functional as F

from jf_lightning.kernels.depthwise_conv import _DepthwiseConvFunction


def median_ms(conv, x: torch.Tensor, grad: torch.Tensor, repeats: int) -> float:
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        conv(x).backward(grad)
        if i >= 3:  # the first calls create oneDNN's kernels
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--images", type=int, default=10, help="generation images in a batch")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"7x7 depthwise conv, forward + backward, {torch.get_num_threads()} threads:")
    for channels in (128, 256):
        x = torch.randn(args.images, channels, 8, 8).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        weight = torch.randn(channels, 1, 7, 7, requires_grad=True)
        bias = torch.randn(channels, requires_grad=True)
        grad = torch.randn_like(x)
        torchs = median_ms(partial(F.conv2d, weight=weight, bias=bias, padding=3, groups=channels), x, grad, args.repeats)
        ours = median_ms(partial(_DepthwiseConvFunction.apply, weight=weight, bias=bias, padding=3), x, grad, args.repeats)
        print(f"  {args.images} x {channels} x 8 x 8: torch {torchs:.2f} ms, ours {ours:.2f} ms ({ours / torchs:.2f}x)")


if __name__ == "__main__":
    main()
