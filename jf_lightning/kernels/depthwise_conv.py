"""The ConvNeXt blocks' 7x7 depthwise conv on CPU: in fp32 under autocast, with a backward made of two
more depthwise forward convs.

Measured gain on a tiny.yaml bf16 training step: on the machine of experiments/tiny.md the fp32 conv took
a step under Lightning from 126 to 114 ms (2 threads) and the backward a further 0.965x (one
thread); on an AVX2-only CPU (one thread, 30:62:8 batches, the other kernels on) 4.49 -> 4.07 s,
0.91x."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _DepthwiseConvFunction(torch.autograd.Function):
    """A stride-1 "same" depthwise conv whose backward is two more depthwise forward convs.

    oneDNN's depthwise forward kernel is fast on CPU, but its weight gradient runs a generic grouped
    kernel that pads every one-channel group to 16 x 16 channels (ONEDNN_VERBOSE shows it). Both
    gradients are depthwise cross-correlations, so they reuse the forward kernel
    (python -m benchmarks.depthwise_conv: 0.27-0.41x on the codec's maps):
    - input: the output gradient correlated with the flipped filter (same padding);
    - filter: per (image, channel) pair, the padded input correlated with that pair's output gradient
      (a depthwise conv over N * C channels with an H x W "filter"), summed over the images.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
        # x: (N, C, H, W); weight: (C, 1, k, k) with k = 2 * padding + 1
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        n, c, h, w = x.shape
        pad, k = ctx.padding, weight.shape[-1]
        grad = grad.contiguous(memory_format=torch.channels_last)  # (N, C, H, W)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(-1, -2), padding=k - 1 - pad, groups=c)
        if ctx.needs_input_grad[1]:
            padded = F.pad(x, (pad, pad, pad, pad)).reshape(1, n * c, h + 2 * pad, w + 2 * pad)
            per_image = F.conv2d(padded, grad.reshape(n * c, 1, h, w), groups=n * c)  # (1, N * C, k, k)
            grad_w = per_image.view(n, c, k, k).sum(0).unsqueeze(1)  # (C, 1, k, k)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None


class DepthwiseConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters and state dict) that, on CPU and when it is a stride-1 "same"
    depthwise conv, runs on a channels-last copy of its input, in fp32 under autocast, with
    ``_DepthwiseConvFunction``'s backward; the result is channels-last too. oneDNN's bf16 depthwise 7x7
    is slower than its fp32 one, whose forward + backward in channels-last took 0.8x the time in two
    decoder blocks. Anywhere else (another device, another conv) it is ``nn.Conv2d``'s forward."""

    def _fits(self) -> bool:
        k, pad = self.kernel_size[0], self.padding
        return (
            self.groups == self.in_channels == self.out_channels
            and self.kernel_size == (k, k) and k % 2 == 1
            and self.stride == (1, 1) and self.dilation == (1, 1)
            and self.padding_mode == "zeros" and isinstance(pad, tuple) and pad == ((k - 1) // 2,) * 2
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, C, H, W)
        if x.device.type != "cpu" or x.dim() != 4 or not self._fits():
            return super().forward(x)
        x = x.contiguous(memory_format=torch.channels_last)
        if torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):  # weights cast too: FSDP2 may hand them over in bf16
                bias = None if self.bias is None else self.bias.float()
                return _DepthwiseConvFunction.apply(x.float(), self.weight.float(), bias, self.padding[0])
        return _DepthwiseConvFunction.apply(x, self.weight, self.bias, self.padding[0])
