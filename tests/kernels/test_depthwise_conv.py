"""The CPU depthwise conv (kernels/depthwise_conv.py): nn.Conv2d's results and gradients, fp32 under autocast."""

import pytest
import torch
from torch import nn

from jf_lightning.kernels.depthwise_conv import DepthwiseConv2d


def pair(seed: int = 0, **kwargs) -> tuple[nn.Conv2d, DepthwiseConv2d]:
    """A plain conv and the kernel with the same parameters (7x7 depthwise "same" by default)."""
    kwargs = {"in_channels": 8, "out_channels": 8, "kernel_size": 7, "padding": 3, "groups": 8} | kwargs
    torch.manual_seed(seed)
    plain = nn.Conv2d(**kwargs)
    kernel = DepthwiseConv2d(**kwargs)
    kernel.load_state_dict(plain.state_dict())
    return plain, kernel


def test_it_is_a_conv2d_with_the_same_state_dict():
    plain, kernel = pair()
    assert isinstance(kernel, nn.Conv2d)
    assert {k: v.shape for k, v in kernel.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}


def test_it_runs_in_fp32_under_cpu_autocast_and_returns_channels_last():
    # oneDNN's bf16 depthwise kernel is the slow one on CPU: under autocast the conv stays in fp32
    plain, kernel = pair()
    x = torch.randn(2, 8, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = kernel(x)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, plain(x))


@pytest.mark.parametrize("autocast", [False, True])
def test_gradients_equal_torchs(autocast):
    # its backward is our own (two depthwise forward convs): every gradient must be conv2d's
    plain, kernel = pair()
    x = torch.randn(3, 8, 6, 5, requires_grad=True)  # not square: height and width must not swap
    grad = torch.randn(3, 8, 6, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ours = kernel(x)
        theirs = plain(x)
    expected = torch.autograd.grad(theirs, (x, plain.weight, plain.bias), grad)
    got = torch.autograd.grad(ours, (x, kernel.weight, kernel.bias), grad)
    tol = {"atol": 0.05, "rtol": 0.05} if autocast else {"atol": 1e-4, "rtol": 1e-4}  # plain conv runs in bf16
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b.float(), **tol)


@pytest.mark.parametrize("kwargs", [{"stride": 2}, {"groups": 1}, {"padding": 1}, {"dilation": 2, "padding": 6},
                                    {"padding": "same"}, {"bias": False, "kernel_size": 5, "padding": 2}])
def test_a_conv_it_does_not_fit_is_plain_conv2d_and_one_it_fits_agrees(kwargs):
    plain, kernel = pair(**kwargs)
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(kernel(x), plain(x), atol=1e-5, rtol=1e-5)
    fits = kernel._fits()
    assert fits == (kwargs.get("bias") is False)  # only the 5x5 "same" depthwise conv takes the CPU path
