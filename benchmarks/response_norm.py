"""The ConvNeXt blocks' GlobalResponseNorm statistic, the L2 norm of each channel over the map, on the
tiny decoder's hidden map under bf16 (10 images, 8 x 8, 4 x 256 channels, channels-last): as the
sum of squares that ``kernels.response_norm.ResponseNorm`` computes, against ``torch.linalg.vector_norm`` (its code
before), forward + backward, same run.

    python -m benchmarks.response_norm [--repeats 50]   (from the repository root)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

SHAPE = (10, 8, 8, 1024)  # (N, H, W, 4C): a batch's generation images in the decoder's hidden layer


def vector_norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True, dtype=torch.float32)


def sum_of_squares(x: torch.Tensor) -> torch.Tensor:
    return x.float().square().sum(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny).sqrt()


def median_ms(norm, x: torch.Tensor, repeats: int) -> float:
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        norm(x).sum().backward()
        if i >= 3:  # the first calls warm up
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(SHAPE).bfloat16().requires_grad_(True)
    torch.testing.assert_close(sum_of_squares(x), vector_norm(x))
    before = median_ms(vector_norm, x, args.repeats)
    now = median_ms(sum_of_squares, x, args.repeats)
    print(f"GRN norm, forward + backward on {SHAPE} bf16, {torch.get_num_threads()} threads:")
    print(f"  torch.linalg.vector_norm  {before:.2f} ms")
    print(f"  sum of squares            {now:.2f} ms ({now / before:.2f}x)")


if __name__ == "__main__":
    main()
