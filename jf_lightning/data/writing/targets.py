"""What a training step computes from a generation image before the LLM sees it, computed ahead of
time: the scaled VAE latent (``model.vae.encode``) and the REPA target (the SigLIP's features at
``siglip.select_layer``, in eval mode: ``JanusFlow.repa_targets``), built through the same loading
path (``build_vae``, ``build_siglip``) from the same model config, so the values are the ones the
run would compute online.

The one difference is the crop: training crops generation images at a random offset
(``transforms.gen_transform``); a pre-encoded latent is fixed, so it is encoded from the centred
crop of the same resized image, and pre-encoded samples lose that augmentation (square images have
a single crop and lose nothing).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from jf_lightning.data.transforms import gen_transform
from jf_lightning.inputs import UserInputError
from jf_lightning.models.config import (
    JanusFlowConfig,
    apply_overrides,
    config_for,
    config_from_hparams,
    resolve_config,
)
from jf_lightning.models.und_encoder import build_siglip
from jf_lightning.models.vae import build_vae


def centre_crop_transform(image: Image.Image, image_size: int) -> torch.Tensor:
    """``gen_transform`` with the crop at the centre (offsets ``(new - image_size) // 2``): the same
    resize of the short side as training. Returns (3, image_size, image_size) float in [-1, 1]."""
    return gen_transform(image, image_size, None)


def check_loadable(cfg: JanusFlowConfig) -> None:
    """Targets from randomly initialised encoders match no training run (each run draws its own):
    refuse them, naming the override that fixes it."""
    if not cfg.generation:
        raise UserInputError("the model config has no generation part (ablation D): nothing to pre-encode")
    if cfg.vae.kind == "autoencoder_kl" and not cfg.vae.source:
        raise UserInputError(
            "vae.source is unset: give --override vae.source=<hub id or folder> (the run's VAE)"
        )
    if cfg.needs_siglip and not cfg.siglip.source:
        raise UserInputError(
            "siglip.source is unset: give --override siglip.source=<hub id or folder> (the run's SigLIP)"
        )


class GenTargetEncoder:
    """Images -> (scaled latents, REPA targets) with the run's own VAE and SigLIP."""

    def __init__(self, cfg: JanusFlowConfig, device: torch.device, vae=None, siglip=None):
        """Encoders built from ``cfg``'s sources as a training run builds them, unless given (loaded
        from a checkpoint)."""
        self.cfg, self.device = cfg, device
        if vae is None:
            check_loadable(cfg)
            vae = build_vae(cfg.vae)
            # The REPA target encoder: the understanding SigLIP, or a SigLIP kept only as the target
            # (B, C, E); both are build_siglip(cfg.siglip). Models without one get latents only.
            siglip = build_siglip(cfg.siglip) if cfg.needs_siglip else None
        self.vae = vae.to(device).eval()
        self.siglip = siglip.to(device).eval() if siglip is not None else None

    @classmethod
    def from_checkpoint(cls, path: str, overrides: dict | None, device: torch.device) -> GenTargetEncoder:
        """The model configuration a fit checkpoint's hyper_parameters hold (``overrides`` applied) and
        the VAE and SigLIP weights it holds: its live weights (``current_model_state`` when it kept an
        EMA), since a training step computes targets with the live encoders."""
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # nothing unpickled as code
            cfg = apply_overrides(config_from_hparams(dict(checkpoint["hyper_parameters"])), overrides)
            cfg.validate()
        except (OSError, KeyError, RuntimeError, ValueError, TypeError) as err:
            raise UserInputError(
                f"--checkpoint {path}: not a fit checkpoint with hyper_parameters ({err})"
            ) from None
        if not cfg.generation:
            raise UserInputError(
                f"--checkpoint {path}: its model has no generation part: nothing to pre-encode"
            )
        state = checkpoint.get("current_model_state") or checkpoint["state_dict"]
        vae = build_vae(cfg.vae)  # as load_janusflow builds it; the checkpoint's tensors then replace it
        siglip = build_siglip(cfg.siglip) if cfg.needs_siglip else None
        # the SigLIP is the understanding encoder, or (B, C, E) the frozen REPA target encoder
        name = "vision_und_enc_model" if cfg.und_encoder == "siglip" else "repa_target_encoder"
        for module, prefix in ((vae, "model.vae."), (siglip, f"model.{name}.")):
            if module is None:
                continue
            weights = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            try:  # strict: every tensor of the encoder comes from the checkpoint
                module.load_state_dict(weights)
            except RuntimeError as err:
                raise UserInputError(
                    f"--checkpoint {path}: its {prefix}* tensors do not fit: {err}"
                ) from None
        return cls(cfg, device, vae, siglip)

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """(3, S, S) in [-1, 1]: the generation transform at the model's size, crop at the centre."""
        return centre_crop_transform(image, self.cfg.image_size)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, 3, S, S) pixels -> latents (N, C, h, w) and targets (N, T_gen, D) or None, float32."""
        pixels = pixels.to(self.device)
        latents = self.vae.encode(pixels)  # (N, C, h, w), float32, scaled
        targets = self.siglip(pixels).float() if self.siglip is not None else None  # (N, T, D)
        return latents.cpu().numpy(), None if targets is None else targets.cpu().numpy()

    def expected_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
        latent = (self.cfg.vae.latent_channels, self.cfg.latent_size, self.cfg.latent_size)
        target = (self.cfg.siglip.num_tokens, self.cfg.siglip.width) if self.siglip is not None else None
        return latent, target


@dataclass
class ModelSource:
    """Which model the targets are for, in one of three ways: a fit ``checkpoint`` (its configuration
    and its VAE and SigLIP weights); a ``config_file`` holding the stage's ``model.init_args`` (the
    ``config.yaml`` a run saves, or ``jf fit -c recipe.yaml --print_config``); or ``preset`` and
    ``ablation``. ``overrides`` (dotted keys) apply on top of any of them."""

    preset: str = "tiny"
    ablation: str | None = None
    overrides: dict = field(default_factory=dict)
    checkpoint: str | None = None
    config_file: str | None = None

    def config(self) -> JanusFlowConfig:
        if self.config_file is None:
            return resolve_config(self.preset, self.ablation, self.overrides)
        try:
            data = yaml.safe_load(Path(self.config_file).read_text())
            args = data["model"]["init_args"]
        except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
            raise UserInputError(
                f"--model-config {self.config_file}: no model.init_args in it ({err})"
            ) from None
        cfg = config_for(args.get("preset", "tiny"), args.get("ablation"), args.get("config"))
        cfg = apply_overrides(cfg, self.overrides)
        cfg.validate()
        return cfg

    def params(self) -> dict:
        """What decides the targets: the checkpoint, or the resolved configuration (two ways of naming
        the same model write the same folder)."""
        if self.checkpoint:
            if not Path(self.checkpoint).is_file():
                raise UserInputError(f"--checkpoint {self.checkpoint}: no such file")
            return {"checkpoint": str(Path(self.checkpoint).resolve()), "overrides": self.overrides}
        try:
            cfg = self.config()
        except ValueError as err:
            raise UserInputError(str(err)) from None
        check_loadable(cfg)  # here, before any folder is made for the targets
        return {"config": dataclasses.asdict(cfg)}

    def encoder(self, device: torch.device) -> GenTargetEncoder:
        if self.checkpoint:
            return GenTargetEncoder.from_checkpoint(self.checkpoint, self.overrides, device)
        return GenTargetEncoder(self.config(), device)
