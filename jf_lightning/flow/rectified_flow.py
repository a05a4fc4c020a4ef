"""Rectified flow, as JanusFlow uses it: t in [0, 1], t = 0 is noise, t = 1 is data."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_logit_normal(n: int, generator: torch.Generator | None = None, mean: float = 0.0, std: float = 1.0,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """t = sigmoid(m), m ~ N(mean, std^2) (SD3's logit-normal); (n,) float32 on ``device``."""
    m = torch.randn(n, generator=generator, dtype=torch.float32) * std + mean
    return torch.sigmoid(m).to(device)


def interpolate(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z_t = t * x + (1 - t) * z0, with t (N,) broadcast over (N, ...)."""
    t = t.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return t * x + (1 - t) * noise


def velocity_target(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """dz_t/dt = x - z0, constant along the straight path."""
    return x - noise


def rf_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between predicted and target velocity (in float32)."""
    return F.mse_loss(pred.float(), target.float())


def repa_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-mean over tokens of cos(h_phi(states), stop_grad(f_enc(x))); pred/target (N, T, D)."""
    return -F.cosine_similarity(pred.float(), target.detach().float(), dim=-1).mean()
