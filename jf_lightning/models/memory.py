"""Memory per GPU of a training step: model states counted from a built model, activations estimated.

States (``state_bytes``), from the parameter counts of the model as built (the meta device will do)
and its ``requires_grad`` flags (the stage's freeze policy), under bf16 mixed precision:

- parameters: fp32 masters, 4 B each (DDP: every rank holds all; FSDP2: each rank 1/N of the sharded
  parts, the replicated VAE whole, plus the bf16 copies of the two largest groups gathered at a time,
  the one computing and the one prefetched);
- gradients: fp32, 4 B per trainable parameter (FSDP2: reduce-scattered, 1/N), and under DDP another
  4 B for its all-reduce buckets (Lightning's DDP keeps ``gradient_as_bucket_view`` off);
- optimizer: AdamW's two fp32 moments, 8 B per trainable parameter (FSDP2: 1/N);
- EMA: one fp32 average per trainable parameter, 4 B (FSDP2: sharded like the weights).

Activations (``activation_bytes``) are an analytic estimate of what autograd keeps for backward in
one micro-step, not a measurement: per LLM decoder layer and token ``28 h + 8 i`` bytes (RMSNorm's
fp32 input and normalised output twice, the bf16 inputs of the q/k/v, o, gate/up and down projections,
q/k/v and the output kept by memory-efficient attention (no L x L scores), the SwiGLU intermediates;
h the width, i the MLP width); the LM head's logits at the labelled tokens (bf16 logits, their fp32
upcast and its gradient: 10 B per vocabulary entry); the trained generation codec, ``52 C`` bytes per
ConvNeXt block and grid cell. Frozen parts before any trained one (SigLIP in stage 2, the VAE, the
REPA target pass) keep nothing. With activation checkpointing every block keeps its fp32 input only,
and one block's activations exist again while it is recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

GIB = 1024**3


def _count(params) -> int:
    return sum(p.numel() for p in params)


def state_bytes(model: nn.Module, world_size: int, sharded: bool) -> dict[str, float]:
    """Parameters, gradients, optimizer and EMA bytes per GPU (module docstring) of ``model``."""
    replicated = _count(getattr(model, "vae", nn.Module()).parameters()) if sharded else 0
    total = _count(model.parameters())
    trained = _count(p for p in model.parameters() if p.requires_grad)
    n = world_size if sharded else 1
    params = 4.0 * ((total - replicated) / n + replicated)
    if sharded:  # two gathered groups in bf16: the largest blocks (LLM decoder layers, SigLIP blocks...)
        blocks = sorted((_count(m.parameters()) for m in _blocks(model)), reverse=True)
        params += 2.0 * sum(blocks[:2])
    return {
        "params": params,
        "grads": 4.0 * trained / n if sharded else 8.0 * trained,  # DDP: .grad and the bucket copy
        "optimizer": 8.0 * trained / n,
        "ema": 4.0 * trained / n,
    }


def _blocks(model: nn.Module) -> list[nn.Module]:
    lm = model.language_model.model
    blocks = list(lm.layers)
    tower = getattr(getattr(model, "vision_und_enc_model", None), "vision_tower", None)
    if tower is not None:
        blocks += list(tower.blocks)
    return blocks


@dataclass
class PackedStep:
    """What one micro-step holds: ``tokens`` packed tokens with ``gen_images`` generation samples and
    ``labelled`` tokens with an AR target."""

    tokens: int = 4096
    gen_images: int = 3
    labelled: int = 512


def activation_bytes(model: nn.Module, step: PackedStep, checkpointing: bool) -> float:
    """The estimated activations of one micro-step (module docstring), in bytes."""
    cfg = model.cfg
    h, i, layers = cfg.llm.hidden_size, cfg.llm.intermediate_size, cfg.llm.num_layers
    per_layer = (28 * h + 8 * i) * step.tokens
    llm = layers * 4 * h * step.tokens + per_layer if checkpointing else layers * per_layer
    logits = 10.0 * model.language_model.lm_head.weight.shape[0] * step.labelled
    codec = 0.0
    if cfg.generation and any(p.requires_grad for p in model.vision_gen_dec_model.parameters()):
        width, cells, blocks = cfg.gen_codec.width, cfg.num_gen_tokens, cfg.gen_codec.num_blocks
        channels = blocks * width + blocks * 2 * width  # encoder blocks at W, decoder blocks at 2W
        per_image = (4 * channels if checkpointing else 52 * channels) * cells
        codec = per_image * step.gen_images
    return float(llm + logits + codec)
