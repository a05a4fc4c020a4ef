"""Euler sampling with classifier-free guidance, as the released JanusFlow samples.

The conditional and unconditional branches run as one batch; the unconditional prompt is the
conditional one with every token after BOS replaced by pad and masked out of attention (the same
rule the training prompt drop follows). The prompt is run once into a KV cache; each step runs only
the time token and the latent tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from jf_lightning.batch import IGNORE_INDEX, PackedBatch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepHook = Callable[[int, torch.Tensor], None]
"""Called at every Euler step with the step index and the clean latent the guided velocity points at."""


def initial_noise(seeds: list[int], shape: tuple[int, ...], temperature: float = 1.0) -> torch.Tensor:
    """(B, *shape) float32 noise, one CPU generator per image: the same (prompt, seed) gives the same
    image on every machine and in every batch composition. ``temperature`` < 1 shrinks it (Glow's
    reduced-temperature sampling: fewer, surer objects at some cost in variety)."""
    noise = torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds])
    return noise * temperature if temperature != 1.0 else noise


@dataclass(frozen=True)
class Autoguide:
    """Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself"): an
    earlier, weaker copy of the model whose conditional velocity the sampler steers away from, adding
    ``weight * (v_cond - v_guide)`` to the classifier-free guided velocity. Where the two models agree
    (what both learned) nothing changes; where the guide errs the most, the step moves away from it."""

    model: torch.nn.Module
    weight: float


def euler_sample(
    velocity: VelocityFn,
    noise: torch.Tensor,
    steps: int,
    cfg_weight: float | None,
    on_step: StepHook | None = None,
    guide_velocity: VelocityFn | None = None,
    guide_weight: float = 0.0,
) -> torch.Tensor:
    """Integrate dz/dt = v from t = 0 (noise) to t = 1 (data). With ``cfg_weight`` the velocity
    function receives [z; z] (conditional rows first) and v = w * v_cond + (1 - w) * v_uncond.
    With ``guide_velocity`` (the conditional velocity of an autoguide), v += k * (v_cond - v_guide).
    ``on_step(i, x_hat)`` sees each step's predicted clean latent x_hat = z + (1 - t) v (B, C, h, w):
    where along the path the picture is decided (the sample grid's trajectory)."""
    z, dt = noise, 1.0 / steps
    for i in range(steps):
        t = torch.full((z.shape[0],), i / steps, device=z.device)
        if cfg_weight is None:
            v = v_cond = velocity(z, t)
        else:
            v_cond, v_uncond = velocity(torch.cat([z, z]), torch.cat([t, t])).chunk(2)
            v = cfg_weight * v_cond + (1 - cfg_weight) * v_uncond
        if guide_velocity is not None:
            v = v + guide_weight * (v_cond - guide_velocity(z, t))
        if on_step is not None:
            on_step(i, z + (1 - i / steps) * v.float())
        z = z + dt * v.float()
    return z


@dataclass
class PromptBatch:
    """Prompts (each starts with BOS and stops before <begin_of_image>), left-padded to P tokens."""

    input_ids: torch.Tensor  # (B, P)
    key_mask: torch.Tensor  # (B, P) bool: False on left padding and on dropped prompts
    position_ids: torch.Tensor  # (B, P): 0 at each prompt's BOS
    lengths: torch.Tensor  # (B,) real prompt lengths: the time token's position

    @classmethod
    def build(cls, prompts: list[list[int]], pad_id: int, unconditional: bool = False) -> PromptBatch:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.bool)
        for i, p in enumerate(prompts):
            start = width - len(p)
            ids[i, start:] = torch.tensor(p)
            mask[i, start:] = True
            if unconditional:  # keep BOS, drop the rest exactly like training does
                ids[i, start + 1 :] = pad_id
                mask[i, start + 1 :] = False
        lengths = torch.tensor([len(p) for p in prompts])
        positions = (torch.arange(width)[None, :] - (width - lengths)[:, None]).clamp(min=0)
        return cls(ids, mask, positions, lengths)

    @classmethod
    def guided(cls, prompts: list[list[int]], pad_id: int, cfg: bool) -> PromptBatch:
        """Conditional rows, then (with ``cfg``) their unconditional twins."""
        cond = cls.build(prompts, pad_id)
        if not cfg:
            return cond
        uncond = cls.build(prompts, pad_id, unconditional=True)
        return cls(*(torch.cat([a, b]) for a, b in zip(cond.astuple(), uncond.astuple())))

    def astuple(self) -> tuple[torch.Tensor, ...]:
        return self.input_ids, self.key_mask, self.position_ids, self.lengths

    def to(self, device) -> PromptBatch:
        return PromptBatch(*(x.to(device) for x in self.astuple()))


def cached_velocity(model, prompts: PromptBatch) -> VelocityFn:
    """Prefill the prompts once; each call then runs the time + latent tokens against the cache."""
    embeds = model.embed_tokens(prompts.input_ids)
    cache = model.prefill(embeds, prompts.key_mask, prompts.position_ids)
    return lambda z, t: model.velocity_with_cache(z, t, cache, prompts.key_mask, prompts.lengths)


def full_velocity(model, prompts: PromptBatch, placeholder_id: int) -> VelocityFn:
    """Reference path without a cache: every step runs the whole sequence through the packed training
    forward (one sample per row), so the sampler and training share one convention."""
    batch = generation_batch(prompts, model.cfg.num_gen_tokens, placeholder_id)

    def velocity(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(batch.to(z.device), noisy_latents=z, t=t).velocity

    return velocity


def generation_batch(prompts: PromptBatch, num_gen_tokens: int, placeholder_id: int) -> PackedBatch:
    """Right-aligned rows [prompt, <slot: time + latents>, pad...] in the PackedBatch layout."""
    b, width = prompts.input_ids.shape
    length = int(prompts.lengths.max()) + 1 + num_gen_tokens
    ids = torch.full((b, length), placeholder_id, dtype=torch.long)
    key_mask = torch.ones(b, length, dtype=torch.bool)
    segment = torch.zeros(b, length, dtype=torch.long)
    positions = torch.zeros(b, length, dtype=torch.long)
    for i, n in enumerate(prompts.lengths.tolist()):
        ids[i, :n] = prompts.input_ids[i, width - n :]
        key_mask[i, :n] = prompts.key_mask[i, width - n :]
        used = n + 1 + num_gen_tokens
        segment[i, :used] = 1
        positions[i, :used] = torch.arange(used)
        positions[i, used:] = torch.arange(length - used)
    empty = torch.zeros(0, 3, 1, 1)
    return PackedBatch(
        input_ids=ids,
        position_ids=positions,
        segment_ids=segment,
        labels=torch.full_like(ids, IGNORE_INDEX),
        key_mask=key_mask,
        und_pixels=empty,
        und_slots=torch.zeros(0, 2, dtype=torch.long),
        gen_pixels=empty,
        gen_slots=torch.stack([torch.arange(b), prompts.lengths], dim=1),
        gen_prompt_dropped=~prompts.key_mask[:, -1] if width > 1 else torch.zeros(b, dtype=torch.bool),
    )


@torch.no_grad()
def generate_latents(
    model,
    prompts: list[list[int]],
    seeds: list[int],
    pad_id: int,
    steps: int = 30,
    cfg_weight: float | None = 2.0,
    use_cache: bool = True,
    placeholder_id: int | None = None,
    on_step: StepHook | None = None,
    temperature: float = 1.0,
    autoguide: Autoguide | None = None,
) -> torch.Tensor:
    """Token prompts -> (B, C, h, w) latents. ``cfg_weight=None`` runs the conditional branch only;
    ``temperature`` scales the initial noise; ``autoguide`` adds autoguidance (one more conditional
    pass per step, through the guide); ``on_step`` is handed to :func:`euler_sample`."""
    device = model.embed_tokens.weight.device
    placeholder = pad_id if placeholder_id is None else placeholder_id

    def velocity_of(net, cfg: bool) -> VelocityFn:
        batch = PromptBatch.guided(prompts, pad_id, cfg=cfg).to(device)
        return cached_velocity(net, batch) if use_cache else full_velocity(net, batch, placeholder)

    velocity = velocity_of(model, cfg_weight is not None)
    guide_velocity = velocity_of(autoguide.model, False) if autoguide is not None else None
    cfg = model.cfg
    shape = (cfg.vae.latent_channels, cfg.latent_size, cfg.latent_size)
    noise = initial_noise(seeds, shape, temperature).to(device)
    return euler_sample(
        velocity, noise, steps, cfg_weight, on_step, guide_velocity, autoguide.weight if autoguide else 0.0
    )
