"""The CPU response norm (kernels/response_norm.py): timm's GlobalResponseNorm, fp32 statistics on a bf16 map."""

import torch
from timm.layers.grn import GlobalResponseNorm

from jf_lightning.kernels.response_norm import ResponseNorm


def test_it_is_timms_grn_and_keeps_bf16_maps_in_bf16():
    torch.manual_seed(0)
    ours = ResponseNorm(32, eps=1e-6, channels_last=True)
    torch.nn.init.normal_(ours.weight, std=0.5)
    torch.nn.init.normal_(ours.bias, std=0.5)
    timms = GlobalResponseNorm(32, eps=1e-6, channels_last=True)
    timms.load_state_dict(ours.state_dict())  # same parameters, so released weights load alike
    x = torch.randn(2, 4, 4, 32)  # (N, H, W, C)
    torch.testing.assert_close(ours(x), timms(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = ours(x.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), timms(x.bfloat16().float()), atol=0.05, rtol=0.02)


def test_gradients_match_timms_under_bf16():
    torch.manual_seed(0)
    ours = ResponseNorm(16, eps=1e-6, channels_last=True)
    torch.nn.init.normal_(ours.weight, std=0.5)
    torch.nn.init.normal_(ours.bias, std=0.5)
    timms = GlobalResponseNorm(16, eps=1e-6, channels_last=True)
    timms.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, 5, 16, requires_grad=True)
    grad = torch.randn(3, 5, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = ours(x.bfloat16())
    got = torch.autograd.grad(low, (x, ours.weight, ours.bias), grad.bfloat16())
    expected = torch.autograd.grad(timms(x), (x, timms.weight, timms.bias), grad)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a.float(), b, atol=0.05, rtol=0.05)


def test_gradient_is_finite_where_a_channel_is_zero_everywhere():
    # GELU can zero a channel over the whole map: a sqrt(sum(x^2)) norm then has an infinite gradient
    # (a demo run went NaN at step 459 that way)
    norm = ResponseNorm(8, eps=1e-6, channels_last=True)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(2, 3, 3, 8)
    x[..., 0] = 0.0
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x.bfloat16())
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(norm.weight.grad).all()
