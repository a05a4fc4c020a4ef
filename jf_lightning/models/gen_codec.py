"""Generation encoder g_enc and decoder g_dec: ConvNeXt blocks conditioned on the time embedding.

Attribute names (``time_proj``, ``time_embed``, ``in_conv``, ``mid_block.res_blocks``, ``out_convs``,
``input_norm``...) follow the released JanusFlow-1.3B checkpoint so its tensors load by name
(see ``weights.py``); everything else about the code is ours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from timm.layers.grn import GlobalResponseNorm
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

# The released model feeds t * 1000 to the sinusoidal embedding (t in [0, 1], 0 = noise).
TIME_SCALE = 1000.0


def _channels_last_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a per-channel norm to an NCHW map."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _CpuDepthwiseConv(torch.autograd.Function):
    """A stride-1 "same" depthwise conv whose backward is two more depthwise forward convs.

    oneDNN's depthwise forward kernel is fast on CPU, but its weight gradient runs a generic grouped
    kernel that pads every one-channel group to 16 x 16 channels (ONEDNN_VERBOSE shows it). Both
    gradients are depthwise cross-correlations, so they reuse the forward kernel
    (python -m benchmarks.depthwise_conv: 0.27-0.41x on the codec's maps; a whole tiny.yaml step
    0.99x on two threads, 0.965x on one, as a DDP rank runs: experiments/tiny.md, session 19):
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


def depthwise_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` on a channels-last copy of ``x`` (N, C, H, W); the result is channels-last too. On CPU
    under autocast it runs in fp32: oneDNN's bf16 depthwise 7x7 is slower than its fp32 one, whose
    forward + backward in channels-last took 0.8x the time in two decoder blocks (benchmarks/train_step.py
    shows the whole step). On CPU the backward is ``_CpuDepthwiseConv``'s."""
    x = x.contiguous(memory_format=torch.channels_last)
    if x.device.type != "cpu":
        return conv(x)
    if torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return _CpuDepthwiseConv.apply(x.float(), conv.weight, conv.bias, conv.padding[0])
    return _CpuDepthwiseConv.apply(x, conv.weight, conv.bias, conv.padding[0])


class ResponseNorm(GlobalResponseNorm):
    """timm's GlobalResponseNorm (same parameters, same result up to rounding) on a channels-last map,
    with its statistics in fp32 while the (N, H, W, C) map keeps its dtype.

    Under CPU bf16 autocast timm's version casts the whole map to fp32 for the norm, multiplies and adds
    in fp32, and hands the next linear an fp32 map to cast back. Here only the (N, 1, 1, C) statistics
    are fp32, and x + b + w * x * x_n is one addcmul: x * (1 + w * x_n) + b.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, RMSNorm, linear x4, GELU, GRN, linear, residual, then x*(1+scale)+shift
    from the time embedding (the release's order: the modulation comes after the residual)."""

    def __init__(self, channels: int, cond_dim: int, eps: float, ffn_factor: int = 4):
        super().__init__()
        hidden = channels * ffn_factor
        self.depthwise = nn.Conv2d(channels, channels, kernel_size=7, padding=3, groups=channels)
        self.norm = LlamaRMSNorm(channels, eps)
        self.channelwise_linear_1 = nn.Linear(channels, hidden)
        self.channelwise_act = nn.GELU()
        self.channelwise_norm = ResponseNorm(hidden, eps=1e-6, channels_last=True)
        self.channelwise_linear_2 = nn.Linear(hidden, channels)
        self.cond_embeds_mapper = nn.Linear(cond_dim, channels * 2)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # x: (N, C, H, W); cond: (N, cond_dim)
        # A channels-last map permutes to a contiguous (N, H, W, C) for free. Contiguity matters: on CPU
        # under bf16 autocast, a linear over a permuted input whose weight needs no grad (the EMA copy)
        # becomes a batched matmul that copies the weight per image row (benchmarks/sampling.py).
        h = depthwise_conv(self.depthwise, x).permute(0, 2, 3, 1)  # (N, H, W, C)
        h = self.channelwise_linear_1(self.norm(h))  # (N, H, W, 4C)
        h = self.channelwise_norm(self.channelwise_act(h))
        h = self.channelwise_linear_2(h).permute(0, 3, 1, 2)  # (N, C, H, W)
        x = x + h
        scale, shift = self.cond_embeds_mapper(F.silu(cond)).chunk(2, dim=1)  # (N, C) each
        return x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class ConvNeXtStack(nn.Module):
    """A run of conditioned ConvNeXt blocks (the release's ``mid_block``)."""

    def __init__(self, channels: int, cond_dim: int, num_blocks: int, eps: float):
        super().__init__()
        self.res_blocks = nn.ModuleList(ConvNeXtBlock(channels, cond_dim, eps) for _ in range(num_blocks))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        for block in self.res_blocks:
            x = block(x, cond)
        return x


class GenerationEncoder(nn.Module):
    """Latent (N, C_lat, h, w) -> feature map (N, W, h/p, w/p) and time embedding (N, D_llm)."""

    def __init__(self, latent_channels: int, width: int, llm_width: int, patch_size: int, num_blocks: int, eps: float):
        super().__init__()
        # diffusers' sinusoidal projection + MLP, exactly the release's time embedding.
        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(width, llm_width)
        self.in_conv = nn.Conv2d(latent_channels, width, kernel_size=patch_size, stride=patch_size)
        self.mid_block = ConvNeXtStack(width, llm_width, num_blocks, eps)

    def embed_time(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """t: (N,) in [0, 1] -> (N, D_llm)."""
        return self.time_embed(self.time_proj(t * TIME_SCALE).to(dtype))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t_emb = self.embed_time(t, z.dtype)  # (N, D_llm)
        features = self.mid_block(self.in_conv(z), t_emb)  # (N, W, g, g), g = h / p
        return features, t_emb


class Unpatchify(nn.Module):
    """RMSNorm + 1x1 conv + pixel shuffle: (N, C_in, g, g) -> (N, C_out, g*p, g*p)."""

    def __init__(self, in_channels: int, out_channels: int, patch_size: int, eps: float):
        super().__init__()
        self.norm = LlamaRMSNorm(in_channels, eps)
        self.unpatch_conv = nn.Conv2d(in_channels, out_channels * patch_size**2, kernel_size=1)
        self.pixel_shuffle = nn.PixelShuffle(patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pixel_shuffle(self.unpatch_conv(_channels_last_norm(self.norm, x)))


class GenerationDecoder(nn.Module):
    """LLM features at the latent tokens (as a map) + the encoder's map (long skip) -> velocity."""

    def __init__(self, latent_channels: int, width: int, llm_width: int, patch_size: int, num_blocks: int, eps: float):
        super().__init__()
        self.input_norm = LlamaRMSNorm(width, eps)
        self.mid_block = ConvNeXtStack(2 * width, llm_width, num_blocks, eps)
        self.out_convs = nn.ModuleList([Unpatchify(2 * width, latent_channels, patch_size, eps)])

    def forward(self, x: torch.Tensor, skip: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        # x, skip: (N, W, g, g); t_emb: (N, D_llm)
        x = torch.cat([_channels_last_norm(self.input_norm, x), skip], dim=1)  # (N, 2W, g, g)
        x = self.mid_block(x, t_emb)
        return self.out_convs[0](x)  # (N, C_lat, g*p, g*p)
