"""``use_cpu_kernels``: switch a built model onto this package's CPU kernels, in place."""

from __future__ import annotations

from timm.layers.grn import GlobalResponseNorm
from torch import nn
from transformers import PreTrainedModel

from jf_lightning.kernels.attention import register_attention
from jf_lightning.kernels.depthwise_conv import DepthwiseConv2d
from jf_lightning.kernels.response_norm import ResponseNorm
from jf_lightning.models.gen_codec import ConvNeXtBlock


def use_cpu_kernels(model: nn.Module) -> nn.Module:
    """Put ``model`` (a JanusFlow, or any module holding transformers LLMs and ConvNeXt blocks) on the
    CPU kernels and return it. Each kernel acts only on CPU and is the plain computation elsewhere.

    - attention: every transformers model in it that runs SDPA switches to ``jf_sdpa`` (registered
      here, once), the matmul path for masked bf16 / fp16 attention on CPU;
    - every ConvNeXt block's depthwise conv becomes a ``DepthwiseConv2d`` and its response norm a
      ``ResponseNorm``: the modules change class in place, so parameters, buffers, hooks and state-dict
      keys stay the same objects, and an optimizer built before or after sees the same tensors.

    Calling it again changes nothing. Results match the plain model up to rounding.
    """
    name = register_attention()
    for module in model.modules():
        if isinstance(module, PreTrainedModel) and module.config._attn_implementation == "sdpa":
            module.set_attn_implementation(name)
    for block in model.modules():
        if isinstance(block, ConvNeXtBlock):
            _reclass(block.depthwise, nn.Conv2d, DepthwiseConv2d)
            _reclass(block.channelwise_norm, GlobalResponseNorm, ResponseNorm)
    return model


def _reclass(module: nn.Module, plain: type[nn.Module], kernel: type[nn.Module]) -> None:
    """Turn ``module``, an instance of exactly ``plain``, into a ``kernel`` (a subclass that adds no state)."""
    if type(module) is plain:
        module.__class__ = kernel
