"""Import and export of the released JanusFlow-1.3B tensor layout.

Our modules carry the release's names, so the mapping is small: the release stores GRN parameters
as (1, 1, 1, C) and keeps SigLIP's unused attention-pool head; it has no REPA head (trained anew)
and no VAE (the SDXL-VAE is loaded on its own).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from jf_lightning.models.janusflow import JanusFlow

_GRN_SUFFIXES = (".channelwise_norm.weight", ".channelwise_norm.bias")
_RELEASE_ONLY_PREFIXES = ("vision_und_enc_model.vision_tower.attn_pool.",)
_OURS_ONLY_PREFIXES = ("repa_head.", "vae.", "repa_target_encoder.")


def from_release(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released tensor names/shapes -> ours (drops the unused attention-pool head)."""
    ours = {}
    for name, tensor in state_dict.items():
        if name.startswith(_RELEASE_ONLY_PREFIXES):
            continue
        ours[name] = tensor.flatten() if name.endswith(_GRN_SUFFIXES) else tensor
    return ours


def to_release(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Ours -> the released layout (no REPA head, no VAE)."""
    release = {}
    for name, tensor in state_dict.items():
        if name.startswith(_OURS_ONLY_PREFIXES):
            continue
        release[name] = tensor.view(1, 1, 1, -1) if name.endswith(_GRN_SUFFIXES) else tensor
    return release


def load_release_weights(model: JanusFlow, state_dict: dict[str, torch.Tensor]) -> None:
    """Load released tensors into ``model``; every tensor of ours but the REPA head / VAE must be
    covered, or this raises naming the missing and unexpected keys."""
    result = model.load_state_dict(from_release(state_dict), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(_OURS_ONLY_PREFIXES)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"released weights do not match this config: missing {missing[:5]} (of {len(missing)}), "
            f"unexpected {result.unexpected_keys[:5]} (of {len(result.unexpected_keys)}); "
            "check the preset (janusflow-1.3b) and the ablation"
        )


def load_release_files(model: JanusFlow, directory: str | Path) -> None:
    """Read every ``*.safetensors`` file of a released checkpoint directory into ``model``."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {directory}: point at the checkpoint directory")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    load_release_weights(model, state)


def export_safetensors(model: JanusFlow, path: str | Path) -> None:
    """Write ``model`` in the released layout as one safetensors file."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in to_release(model.state_dict()).items()}
    save_file(tensors, str(path))
