"""The packed batch: the one contract between the data pipeline and the model.

Several samples share a row. Every sample restarts its position ids at 0 and has its own segment id, so
attention never crosses sample boundaries. Images are not tokens: their embeddings are written into the
row at the slots given here, so the model never re-parses text.

Slot layout inside a row (``start`` is the column of the slot's first token):
- understanding image: ``1 + T_und`` tokens: the begin-of-understanding embedding (in place of the
  ``<begin_of_image>`` tag) followed by ``T_und`` encoder features;
- generation latent: ``1 + T_gen`` tokens: the time-embedding token (in place of ``<begin_of_image>``)
  followed by ``T_gen`` latent tokens. Velocities are read at the latent tokens themselves (no shift).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

IGNORE_INDEX = -100


@dataclass
class PackedBatch:
    input_ids: torch.Tensor
    """(R, L) long: token ids; ids at image slots are placeholders and are never embedded."""
    position_ids: torch.Tensor
    """(R, L) long: restarts at 0 for every sample (and for the trailing padding)."""
    segment_ids: torch.Tensor
    """(R, L) long: 1, 2, ... per sample in the row; 0 for padding."""
    labels: torch.Tensor
    """(R, L) long, already shifted: labels[r, i] is the token the prediction at i must produce;
    IGNORE_INDEX where there is no target (prompts, images, padding, last token of a sample)."""
    key_mask: torch.Tensor
    """(R, L) bool: False for keys no query may attend to (a dropped prompt, as the sampler's
    unconditional branch does). Padding stays True: it attends only to itself."""
    und_pixels: torch.Tensor
    """(N_und, 3, H, W) float in [-1, 1]: understanding images (resized on the long side, padded)."""
    und_slots: torch.Tensor
    """(N_und, 2) long: (row, start) of each understanding image's 1 + T_und tokens."""
    gen_pixels: torch.Tensor
    """(N_gen, 3, H, W) float in [-1, 1]: generation images (short side resized, random crop);
    (0, 3, H, W) when ``gen_latents`` are pre-encoded."""
    gen_slots: torch.Tensor
    """(N_gen, 2) long: (row, start) of each generation sample's 1 + T_gen tokens."""
    gen_prompt_dropped: torch.Tensor
    """(N_gen,) bool: True where the prompt was replaced by pad and masked (classifier-free guidance)."""
    gen_latents: torch.Tensor | None = None
    """(N_gen, C, h, w) float: pre-encoded, scaled VAE latents (skip the VAE), or None."""
    repa_targets: torch.Tensor | None = None
    """(N_gen, T_gen, D) float: pre-encoded REPA targets (skip the target encoder), or None."""
    batch_index: int = 0
    """Global index of this batch in its stream (set by the loader worker that built it)."""
    sample_keys: list[str] | None = None
    """``"<kind>:<shard url>#<key>"`` of each sample, in the order they were built (not row order)."""
    data_stats: dict[str, int] | None = None
    """Records skipped (by reason) or altered while this batch was built: the loader workers' counts,
    shipped to the main process with the batch (``callbacks/data_stats.py`` logs them)."""

    @property
    def num_rows(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    @property
    def num_gen(self) -> int:
        return self.gen_slots.shape[0]

    @property
    def num_und(self) -> int:
        return self.und_slots.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        """Lightning calls this (the batch is a "transferable" type) to move it to the device."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)
