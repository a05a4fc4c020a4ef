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
        self.channelwise_norm = GlobalResponseNorm(hidden, eps=1e-6, channels_last=True)
        self.channelwise_linear_2 = nn.Linear(hidden, channels)
        self.cond_embeds_mapper = nn.Linear(cond_dim, channels * 2)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # x: (N, C, H, W); cond: (N, cond_dim)
        # The conv gets a channels-last copy of x, so its output is channels-last and permutes to a
        # contiguous (N, H, W, C) for free. Contiguity matters: on CPU under bf16 autocast, a linear over a
        # permuted input whose weight needs no grad (the EMA copy) becomes a batched matmul that copies
        # the weight per image row (benchmarks/sampling.py).
        h = self.depthwise(x.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)  # (N, H, W, C)
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
