"""REPA projector: LLM states at the latent tokens -> the understanding encoder's feature width."""

from __future__ import annotations

import torch
from torch import nn


class RepaHead(nn.Module):
    """Three-layer MLP, Linear-SiLU-Linear-SiLU-Linear (the REPA paper's projector; JanusFlow states
    only "three layers")."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.mlp(states)  # (..., D_llm) -> (..., D_und)
