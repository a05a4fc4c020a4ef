"""The frozen latent codec: images in [-1, 1] <-> scaled latents, behind one interface.

- ``AutoencoderKLCodec``: diffusers ``AutoencoderKL`` (SDXL-VAE for real runs), with the scaling and
  shift factors from its own config. Runs in fp32 or bf16; fp16 is refused (SDXL-VAE overflows).
- ``PixelShuffleCodec``: an exactly invertible space-to-depth latent for the tiny preset. A random
  tiny AutoencoderKL decodes noise, and training one would add minutes and a cache to every fresh
  machine; space-to-depth gives the tiny model a latent that decodes to real pictures for free, so
  the embedded default shows what the generator learnt and nothing else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn

from jf_lightning.models.config import VAEConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"vae.dtype={name!r} is refused: the SDXL-VAE decodes garbage in fp16; use float32 or bfloat16")
    return _DTYPES[name]


class LatentCodec(nn.Module):
    """Frozen image <-> latent map. Subclasses define ``_encode`` and ``_decode``."""

    latent_channels: int
    downsample_factor: int

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, C, H/f, W/f) scaled latent, float32."""
        return self._encode(pixels).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) scaled latent -> (N, 3, h*f, w*f) in [-1, 1], float32."""
        return self._decode(latents).float().clamp(-1, 1)

    def train(self, mode: bool = True) -> LatentCodec:
        return super().train(False)  # always frozen, always in eval mode


class PixelShuffleCodec(LatentCodec):
    """Space-to-depth: (N, 3, H, W) -> (N, 3 f^2, H/f, W/f), times a scale. Exactly invertible."""

    def __init__(self, factor: int, scale: float = 1.0):
        super().__init__()
        self.downsample_factor = factor
        self.latent_channels = 3 * factor * factor
        self.scale = scale

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(pixels.float(), self.downsample_factor) * self.scale

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents.float() / self.scale, self.downsample_factor)


class AutoencoderKLCodec(LatentCodec):
    """diffusers AutoencoderKL; latent = (mean - shift) * scale (the posterior mean: deterministic,
    so pre-encoded shards and on-the-fly encoding agree)."""

    def __init__(self, vae: AutoencoderKL, dtype: str = "float32", scaling_factor: float | None = None):
        super().__init__()
        if vae.dtype != _dtype(dtype):
            vae = vae.to(_dtype(dtype))
        self.vae = vae.requires_grad_(False).eval()
        self.dtype = _dtype(dtype)
        self.scaling_factor = scaling_factor or vae.config.scaling_factor
        self.shift_factor = getattr(vae.config, "shift_factor", None) or 0.0
        self.latent_channels = vae.config.latent_channels
        self.downsample_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = self.vae.encode(pixels.to(self.dtype)).latent_dist.mean
        return (mean - self.shift_factor) * self.scaling_factor

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents / self.scaling_factor + self.shift_factor
        return self.vae.decode(latents.to(self.dtype)).sample


def random_autoencoder_kl(cfg: VAEConfig) -> AutoencoderKL:
    """A randomly initialised AutoencoderKL sized by ``cfg`` (tests; real runs load the SDXL-VAE)."""
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=cfg.latent_channels,
        block_out_channels=tuple(cfg.block_out_channels),
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=min(32, cfg.block_out_channels[0]),
        sample_size=64,
    )


def build_vae(cfg: VAEConfig) -> LatentCodec:
    """The one loading path: a hub id or local directory through ``AutoencoderKL.from_pretrained``,
    a random AutoencoderKL when ``source`` is None, or the pixel-shuffle codec."""
    _dtype(cfg.dtype)  # refuse fp16 before any weights are read
    if cfg.kind == "pixel_shuffle":
        return PixelShuffleCodec(cfg.downsample_factor, cfg.scaling_factor or 1.0)
    if cfg.source:
        vae = AutoencoderKL.from_pretrained(cfg.source, torch_dtype=_dtype(cfg.dtype))
    else:
        vae = random_autoencoder_kl(cfg)
    codec = AutoencoderKLCodec(vae, cfg.dtype, cfg.scaling_factor)
    if codec.latent_channels != cfg.latent_channels or codec.downsample_factor != cfg.downsample_factor:
        raise ValueError(
            f"VAE {cfg.source!r} has {codec.latent_channels} latent channels and downsamples by "
            f"{codec.downsample_factor}; set vae.latent_channels / vae.downsample_factor to match"
        )
    return codec
