"""The ConvNeXt blocks' GlobalResponseNorm on CPU, with fp32 statistics on a map that keeps its dtype.

Measured gain on a tiny.yaml bf16 training step: about 0.95x under Lightning on the machine of
experiments/tiny.md (2 threads: 106 against 111 ms a step, averaged over noisy runs); on an
AVX2-only CPU (one thread, the other kernels on) within the noise, 4.08 -> 4.07 s a step (four ConvNeXt
blocks' forward + backward 1.81 -> 1.79 s)."""

from __future__ import annotations

import torch
from timm.layers.grn import GlobalResponseNorm


class ResponseNorm(GlobalResponseNorm):
    """timm's GlobalResponseNorm (same parameters, same result up to rounding) on a channels-last map,
    with its statistics in fp32 while the (N, H, W, C) map keeps its dtype; timm's own forward off CPU.

    Under CPU bf16 autocast timm's version casts the whole map to fp32 for the norm, multiplies and adds
    in fp32, and hands the next linear an fp32 map to cast back. Here only the (N, 1, 1, C) statistics
    are fp32, and x + b + w * x * x_n is one addcmul: x * (1 + w * x_n) + b.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            # The L2 norm as a sum of squares in fp32: on CPU, torch.linalg.vector_norm over the (H, W)
            # dims of a channels-last map took ~10x as long (python -m benchmarks.response_norm). The clamp
            # keeps the backward finite where GELU zeroes a channel over the whole map, where sqrt(0)
            # has an infinite gradient (a demo went NaN at step 459 that way); it moves no other norm.
            sum_sq = x.float().square().sum(dim=self.spatial_dim, keepdim=True)  # (N, 1, 1, C)
            x_g = sum_sq.clamp_min(torch.finfo(torch.float32).tiny).sqrt()
            x_n = x_g / (x_g.mean(dim=self.channel_dim, keepdim=True) + self.eps)
            scale = 1 + self.weight.view(self.wb_shape) * x_n  # (N, 1, 1, C)
            return torch.addcmul(self.bias.view(self.wb_shape).to(x.dtype), x, scale.to(x.dtype))
