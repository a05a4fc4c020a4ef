"""Index and mask helpers for packed rows."""

from __future__ import annotations

import torch


def slot_index(slots: torch.Tensor, length: int, skip_first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2) (row, start) slots -> advanced-index pair addressing (N, length) tokens; with
    ``skip_first`` the first token of each slot (begin / time token) is left out."""
    offsets = torch.arange(int(skip_first), length, device=slots.device)  # (T,)
    rows = slots[:, :1].expand(-1, offsets.numel())  # (N, T)
    cols = slots[:, 1:2] + offsets  # (N, T)
    return rows, cols


def slot_blocks(slots: torch.Tensor, length: int, shape: tuple[int, int]) -> torch.Tensor:
    """(N, 2) (row, start) slots of ``length`` tokens -> (R, L) block ids: k + 1 on the tokens of the
    k-th slot, 0 elsewhere (the ``blocks`` argument of ``packed_attention_mask``)."""
    blocks = torch.zeros(shape, dtype=torch.long, device=slots.device)
    rows, cols = slot_index(slots, length)  # (N, length) each
    ids = torch.arange(1, slots.shape[0] + 1, device=slots.device)[:, None].expand_as(rows)
    return blocks.index_put_((rows, cols), ids)


def packed_attention_mask(
    segment_ids: torch.Tensor, key_mask: torch.Tensor, dtype: torch.dtype, blocks: torch.Tensor | None = None
) -> torch.Tensor:
    """(R, L) segments + (R, L) key visibility -> (R, 1, L, L) additive mask: causal, within a sample,
    and hiding masked keys (a dropped prompt). ``blocks`` (R, L), from ``slot_blocks``, makes the
    tokens of each non-zero block see each other both ways (bidirectional attention in an image slot).

    transformers can derive a block-causal mask from packed position ids, but it cannot hide single
    keys, which the classifier-free-guidance prompt drop needs; so the mask is built here and handed
    to the model as a ready 4D mask (transformers passes those through unchanged).
    """
    length = segment_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()  # (L, L)
    same_sample = segment_ids[:, :, None] == segment_ids[:, None, :]  # (R, L, L)
    allowed = same_sample & causal
    if blocks is not None:
        allowed |= (blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] > 0)
    allowed &= key_mask[:, None, :]
    # Every query keeps itself: a masked prompt token must not become an empty (NaN) softmax row.
    allowed |= torch.eye(length, dtype=torch.bool, device=segment_ids.device)
    return additive_mask(allowed[:, None], dtype)  # (R, 1, L, L)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean "query may see key" -> the additive mask SDPA takes: 0 where allowed, dtype's min elsewhere."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)
