"""Understanding encoders: SigLIP through timm (the final design), and the VAE+ConvNeXt encoder of
ablation C. Each maps images (N, 3, H, W) in [-1, 1] to features (N, T, D_feat); the aligner to the
LLM width and the begin-of-understanding embedding live in ``janusflow.py`` (as in the release)."""

from __future__ import annotations

import copy
import os

import timm
import torch
from timm.models import save_for_hf
from torch import nn

from jf_lightning.models.config import SiglipConfig
from jf_lightning.models.gen_codec import GenerationEncoder
from jf_lightning.models.vae import LatentCodec


def _timm_source(source: str) -> str:
    return f"local-dir:{source}" if os.path.isdir(source) else f"hf-hub:{source}"


def _timm_dims(cfg: SiglipConfig) -> dict:
    return {
        "img_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "embed_dim": cfg.width,
        "depth": cfg.depth,
        "num_heads": cfg.num_heads,
        "mlp_ratio": cfg.mlp_ratio,
    }


class SiglipEncoder(nn.Module):
    """SigLIP ViT (timm). ``vision_tower`` is the release's attribute name, so the released tensors
    (``vision_und_enc_model.vision_tower.*``) load by name."""

    def __init__(self, vision_tower: nn.Module, select_layer: int = -1):
        super().__init__()
        # SigLIP's attention-pool head is never used (patch features only); dropped so that stage 3,
        # which trains SigLIP, has no parameters without gradients (DDP would refuse them).
        if getattr(vision_tower, "attn_pool", None) is not None:
            vision_tower.attn_pool = None
        self.vision_tower = vision_tower
        self.select_layer = select_layer

    @property
    def width(self) -> int:
        return self.vision_tower.embed_dim

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # pixels: (N, 3, H, W) in [-1, 1], which is SigLIP's own normalisation (mean = std = 0.5)
        if self.select_layer == -1:
            return self.vision_tower.forward_features(pixels)  # (N, T, D)
        (features,) = self.vision_tower.forward_intermediates(
            pixels, indices=[self.select_layer - 1], norm=False, output_fmt="NLC", intermediates_only=True
        )
        return features  # (N, T, D)


def build_siglip(cfg: SiglipConfig) -> SiglipEncoder:
    """The one loading path: timm ``hf-hub:`` id or ``local-dir:`` folder, or random init from the
    config's dims (no download)."""
    if cfg.source:
        tower = timm.create_model(_timm_source(cfg.source), pretrained=True, num_classes=0)
    else:
        tower = timm.create_model(cfg.timm_name, pretrained=False, num_classes=0, **_timm_dims(cfg))
    if tower.embed_dim != cfg.width or tower.patch_embed.num_patches != cfg.num_tokens:
        raise ValueError(
            f"SigLIP {cfg.source or cfg.timm_name!r} gives {tower.patch_embed.num_patches} tokens of width "
            f"{tower.embed_dim}; set siglip.width / image_size / patch_size to match"
        )
    return SiglipEncoder(tower, cfg.select_layer)


def save_siglip(encoder: SiglipEncoder, cfg: SiglipConfig, directory: str) -> None:
    """Save with timm's own hub format, so ``siglip.source=<directory>`` loads it back."""
    save_for_hf(encoder.vision_tower, directory, model_args=_timm_dims(cfg))


class VaeConvNeXtEncoder(nn.Module):
    """Ablation C: frozen VAE + a ConvNeXt encoder of the generation encoder's architecture and init,
    run on the clean latent (t = 1)."""

    def __init__(self, vae: LatentCodec, gen_encoder: GenerationEncoder):
        super().__init__()
        self.vae = vae  # shared with generation, frozen
        self.encoder = copy.deepcopy(gen_encoder)  # same init, trained separately

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        latents = self.vae.encode(pixels)  # (N, C, h, w)
        clean = torch.ones(latents.shape[0], device=latents.device)
        features, _ = self.encoder(latents.to(pixels.dtype), clean)  # (N, W, g, g)
        return features.flatten(2).transpose(1, 2)  # (N, g*g, W)
