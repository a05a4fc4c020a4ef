"""``use_cpu_kernels``: switched on explicitly, in place, idempotent; a whole tiny model agrees with the
plain one; importing the package registers nothing."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.layers.grn import GlobalResponseNorm
from torch import nn

from jf_lightning.kernels import use_cpu_kernels
from jf_lightning.kernels.attention import ATTN_IMPLEMENTATION
from jf_lightning.kernels.depthwise_conv import DepthwiseConv2d
from jf_lightning.kernels.response_norm import ResponseNorm
from jf_lightning.models.config import tiny
from jf_lightning.models.gen_codec import ConvNeXtBlock
from jf_lightning.models.janusflow import JanusFlow
from tests.models.builders import gen_sample, pack_rows, text_sample, und_sample


def tiny_model() -> JanusFlow:
    torch.manual_seed(0)
    return JanusFlow(tiny()).train()


def blocks(model: nn.Module) -> list[ConvNeXtBlock]:
    return [m for m in model.modules() if isinstance(m, ConvNeXtBlock)]


def test_the_plain_model_uses_sdpa_and_torch_modules():
    model = tiny_model()
    assert model.language_model.config._attn_implementation == "sdpa"
    assert blocks(model)
    for block in blocks(model):
        assert type(block.depthwise) is nn.Conv2d and type(block.channelwise_norm) is GlobalResponseNorm


def test_it_switches_in_place_keeps_every_parameter_and_is_idempotent():
    model = tiny_model()
    params = dict(model.named_parameters())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_cpu_kernels(model) is model
    for _ in range(2):  # a second call changes nothing
        assert model.language_model.config._attn_implementation == ATTN_IMPLEMENTATION
        assert model.language_model.model.config._attn_implementation == ATTN_IMPLEMENTATION
        for block in blocks(model):
            assert type(block.depthwise) is DepthwiseConv2d and type(block.channelwise_norm) is ResponseNorm
        after = dict(model.named_parameters())
        assert after.keys() == params.keys() and all(after[k] is params[k] for k in params)
        assert model.state_dict().keys() == state.keys()
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
        use_cpu_kernels(model)


def batch(cfg):
    g = torch.Generator().manual_seed(0)
    rows = [[und_sample(cfg.num_und_tokens, question=[20, 21, 22], answer=[30, 31]), text_sample([40, 41, 42, 43])],
            [gen_sample([50, 51, 52], cfg.num_gen_tokens), gen_sample([53, 54], cfg.num_gen_tokens, dropped=True)]]
    seq_len = max(sum(len(s.tokens) for s in row) for row in rows) + 3
    size = cfg.image_size
    b = pack_rows(rows, seq_len, und_pixels=torch.rand(1, 3, size, size, generator=g) * 2 - 1,
                  gen_pixels=torch.rand(2, 3, size, size, generator=g) * 2 - 1)
    return b, g


def loss_and_grads(model: JanusFlow) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One bf16-autocast forward + backward on a packed batch with understanding and generation rows."""
    b, g = batch(model.cfg)
    x = model.vae.encode(b.gen_pixels)
    t = torch.rand(x.shape[0], generator=g)
    noise = torch.randn(x.shape, generator=g)
    z_t = t[:, None, None, None] * x + (1 - t[:, None, None, None]) * noise
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(b, z_t, t)
        loss = (out.ar_loss + F.mse_loss(out.velocity.float(), x - noise)
                + F.mse_loss(out.repa_pred.float(), model.repa_targets(b).float()))
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_a_whole_tiny_model_agrees_with_and_without_kernels():
    plain_loss, plain_grads = loss_and_grads(tiny_model())
    loss, grads = loss_and_grads(use_cpu_kernels(tiny_model()))
    torch.testing.assert_close(loss, plain_loss, atol=0.01, rtol=0.01)
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():  # bf16 rounding differs (fp32 conv, fp32 statistics): ~1% at most
        error = (grad - plain_grads[name]).norm() / plain_grads[name].norm().clamp_min(1e-12)
        assert error < 0.05, (name, error)


def test_importing_the_package_registers_nothing():
    code = """
import jf_lightning.kernels
import jf_lightning.kernels.attention
from jf_lightning.models.config import tiny
from jf_lightning.models.janusflow import JanusFlow
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

model = JanusFlow(tiny())
assert "sdpa" in AttentionInterface()
assert "jf_sdpa" not in AttentionInterface() and "jf_sdpa" not in AttentionMaskInterface()
jf_lightning.kernels.use_cpu_kernels(model)
assert "jf_sdpa" in AttentionInterface() and "jf_sdpa" in AttentionMaskInterface()
"""
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            timeout=300, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("cpu_kernels", [False, True])
def test_a_stage_switches_them_on_only_when_asked(cpu_kernels):
    from jf_lightning.stages import PretrainingStage

    stage = PretrainingStage(cpu_kernels=cpu_kernels)
    stage.configure_model()
    expected = ATTN_IMPLEMENTATION if cpu_kernels else "sdpa"
    assert stage.model.language_model.config._attn_implementation == expected
    assert all(isinstance(b.depthwise, DepthwiseConv2d) == cpu_kernels for b in blocks(stage.model))
