"""The LLM's attention on CPU: transformers' SDPA, except for masked attention under bf16 / fp16.

On CPU under bf16 (or fp16), SDPA with an explicit mask runs a flash kernel that is slow on the packed
rows this project trains on: short rows (256 tokens), 32-dim heads and a block-causal mask. Forward +
backward over five such rows took ~10 ms a layer, against ~4 ms for the plain matmul-softmax-matmul
below (``python -m benchmarks.attention`` prints both).

Measured gain on a tiny.yaml bf16 training step (30:62:8 batches, one thread): on the avx512_bf16 machine
of experiments/tiny.md 162 -> 130 ms, 0.80x. On a CPU without bf16 matrix units (AVX2 only,
where bf16 matmuls are emulated and a step takes ~4 s) it is a loss: with the other kernels on, 3.78 s
without it against 4.07 s with it (1.08x; a layer 49 ms with SDPA, 138 ms here).
Everywhere else SDPA's own kernels are the right ones, so this delegates: on GPU, in fp32 (where the flash
kernel is the faster one), and without a mask (transformers then asks for ``is_causal``).

Nothing is registered on import: ``register_attention()`` (called by ``kernels.use_cpu_kernels``) adds it
to transformers under ``ATTN_IMPLEMENTATION``, for both the attention function and the mask builder
(SDPA's: boolean "may attend" masks, or None where causality alone suffices).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_IMPLEMENTATION = "jf_sdpa"


def matmul_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scaling: float
) -> torch.Tensor:
    """(B, H, Q, D) queries, (B, H, K, D) keys and values, (B, 1 or H, Q, K) mask -> (B, H, Q, D).

    ``mask`` is boolean ("may attend") or additive. The scores stay in the compute dtype: CPU's softmax
    accumulates bf16 in fp32 internally, and skipping eager attention's fp32 round trip (a cast of every
    (Q, K) score map and its gradient) is most of the gain. A masked entry gets the dtype's minimum, not
    -inf, so a query that sees no key at all gets a uniform row instead of NaN, as with an additive mask.
    """
    scores = torch.matmul(query * scaling, key.transpose(-1, -2))  # (B, H, Q, K)
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    else:
        scores = scores + mask.to(scores.dtype)
    return torch.matmul(torch.softmax(scores, dim=-1), value)  # (B, H, Q, D)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls on ``x`` run in: autocast's where it is on (RoPE hands attention fp32 queries
    even then), else ``x``'s own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def jf_sdpa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: (B, H, Q, D) query -> ((B, Q, H, D) output, None)."""
    reduced_precision = compute_dtype(query) in (torch.bfloat16, torch.float16)
    masked_on_cpu = query.device.type == "cpu" and attention_mask is not None
    if not (masked_on_cpu and reduced_precision) or (dropout > 0.0 and module.training):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    groups = query.shape[1] // key.shape[1]  # grouped-query attention: each key/value head serves `groups` heads
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = matmul_attention(query, repeat_kv(key, groups), repeat_kv(value, groups), attention_mask, scale)
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> str:
    """Register the attention (and SDPA's mask builder) with transformers under ``ATTN_IMPLEMENTATION``;
    calling it again changes nothing. Returns the name, for ``model.set_attn_implementation``."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, jf_sdpa_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return ATTN_IMPLEMENTATION
