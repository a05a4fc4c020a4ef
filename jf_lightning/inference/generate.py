"""Prompts -> images with a model: batched sampling with per-image seeds, and the sampler's path as
images. Shared by the evaluation callbacks and the evaluation scripts."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from jf_lightning.flow.sampler import Autoguide, StepHook, generate_latents
from jf_lightning.inference.images import to_uint8


def latents_to_images(vae, latents: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) scaled latents -> (N, 3, H, W) uint8 through the frozen VAE."""
    return to_uint8(vae.decode(latents))



@torch.no_grad()
def generate_images(
    model,
    prompt_ids: Sequence[list[int]],
    seeds: Sequence[int],
    pad_id: int,
    steps: int,
    cfg_weight: float | None,
    batch_size: int,
    temperature: float = 1.0,
    autoguide: Autoguide | None = None,
) -> torch.Tensor:
    """Token prompts (each BOS ... up to ``<begin_of_image>``) -> (N, 3, H, W) uint8, in batches of
    ``batch_size``. Every image's noise comes from its own seed, so batching changes nothing.
    ``temperature`` and ``autoguide``: see :func:`generate_latents`."""
    return generate_trajectories(
        model, prompt_ids, seeds, pad_id, steps, cfg_weight, batch_size, 1, temperature, autoguide
    )[:, 0]


def _collect(keep: set[int], into: list[torch.Tensor]) -> StepHook:
    """A sampler hook that appends the predicted clean latent of the steps in ``keep`` to ``into``."""

    def hook(step: int, x_hat: torch.Tensor) -> None:
        if step in keep:
            into.append(x_hat)

    return hook


@torch.no_grad()
def generate_trajectories(
    model,
    prompt_ids: Sequence[list[int]],
    seeds: Sequence[int],
    pad_id: int,
    steps: int,
    cfg_weight: float | None,
    batch_size: int,
    columns: int,
    temperature: float = 1.0,
    autoguide: Autoguide | None = None,
) -> torch.Tensor:
    """Like :func:`generate_images`, but (N, columns, 3, H, W) uint8: the clean image predicted at
    ``columns - 1`` evenly spaced Euler steps, the first at pure noise, then the finished image
    (``columns=1``: the finished image alone)."""
    if not 1 <= columns <= steps + 1:
        raise ValueError(f"columns={columns} must be within 1..steps + 1 = {steps + 1} (a path has steps + 1 points)")
    keep = {round(k * (steps - 1) / max(columns - 2, 1)) for k in range(columns - 1)}  # step indices
    out = []
    for i in range(0, len(prompt_ids), batch_size):
        predicted = []  # x_hat at the kept steps, each (b, C, h, w)
        latents = generate_latents(
            model,
            list(prompt_ids[i : i + batch_size]),
            list(seeds[i : i + batch_size]),
            pad_id,
            steps,
            cfg_weight,
            on_step=_collect(keep, predicted),
            temperature=temperature,
            autoguide=autoguide,
        )
        path = torch.stack([*predicted, latents], dim=1)  # (b, columns, C, h, w)
        out.append(latents_to_images(model.vae, path.flatten(0, 1)).unflatten(0, path.shape[:2]))
    return torch.cat(out)
