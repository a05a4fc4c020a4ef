"""Analytic FLOP count of one packed training step of JanusFlow (forward + backward), for MFU.

Counted, as matrix-product FLOPs (2 per multiply-add), the way MFU counts them:
- every ``nn.Linear`` / ``nn.Conv2d`` weight: ``2 x weight elements x positions it is applied at`` per
  forward: LLM blocks at every token, the LM head at the labelled tokens only (the model computes no
  other logits), SigLIP's patch embedding and blocks at its T patches per understanding image, the
  generation encoder/decoder and aligners at the g x g latent grid per generation image (their time
  and condition MLPs once per image), the REPA head at the latent tokens;
- attention: ``4 x d x L_q x L_k`` per layer forward (QK^T and AV), with per-sample lengths (the
  block-diagonal packed mask: ``attention="packed"``, the useful work) or whole rows (``"rows"``: what
  a dense masked kernel computes, as the CPU/SDPA path of this model does);
- backward: 2x forward for a part on the gradient path (gradients of its inputs and of its weights),
  1x for a frozen part the gradient still flows through (the LLM in stage 1), nothing for a frozen
  part before any trained one (a frozen SigLIP, the REPA target pass, which runs without grad).
Not counted: norms, activations, softmax, rotary, embeddings lookups, the loss, the optimizer, and the
frozen VAE's encode (pre-encoded latents skip it; ``gen_latents`` in the batch): a few percent of a
step at 1.3B. ``tests/models/test_flops.py`` checks the count against torch's FlopCounterMode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from jf_lightning.batch import IGNORE_INDEX, PackedBatch

PER_IMAGE = ("time_embed", "cond_embeds_mapper")  # codec MLPs applied once per image, not per cell


def _weights(module: nn.Module | None, skip: tuple[str, ...] = ()) -> tuple[int, int]:
    """(per-position, per-image) weight elements of ``module``'s Linear/Conv2d layers, and their
    trained share is read separately; ``skip`` drops submodules by name prefix."""
    per_pos = per_image = 0
    if module is None:
        return 0, 0
    for name, m in module.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)) or name.startswith(skip):
            continue
        if any(part in name.split(".") for part in PER_IMAGE):
            per_image += m.weight.numel()
        else:
            per_pos += m.weight.numel()
    return per_pos, per_image


def _trained(module: nn.Module | None) -> bool:
    return module is not None and any(p.requires_grad for p in module.parameters())


@dataclass
class Part:
    """A piece of the model: forward FLOPs per unit of work and the backward multiple."""

    per_position: int = 0  # weight elements applied at every position
    per_image: int = 0  # weight elements applied once per image
    backward: int = 0  # 2: on the gradient path with trained weights, 1: inputs only, 0: forward only


@dataclass
class FlopModel:
    """A model's FLOP-relevant sizes, read once (on any device, meta included); ``step`` counts a batch."""

    d_llm: int
    num_layers: int
    llm: Part
    lm_head: Part
    und: Part  # understanding encoder + aligner, per understanding image, at T_und positions
    und_attention: tuple[int, int, int] = (0, 0, 0)  # (layers, width, tokens) of a ViT encoder
    gen_enc: Part = field(default_factory=Part)  # at the g x g grid per generation image
    gen_dec: Part = field(default_factory=Part)
    repa_target: Part = field(default_factory=Part)  # the target encoder's no-grad pass per gen image
    repa_attention: tuple[int, int, int] = (0, 0, 0)
    und_tokens: int = 0
    gen_tokens: int = 0

    @classmethod
    def from_model(cls, model: nn.Module) -> FlopModel:
        cfg = model.cfg
        lm = model.language_model
        any_trained = _trained(model)
        # the LLM and everything after it carry the gradient whenever anything is trained
        through = lambda m: 2 if _trained(m) else (1 if any_trained else 0)
        own = lambda m: 2 if _trained(m) else 0
        llm_blocks = lm.model.layers
        fm = cls(
            d_llm=cfg.llm.hidden_size,
            num_layers=len(llm_blocks),
            llm=Part(_weights(llm_blocks)[0], 0, through(llm_blocks)),
            lm_head=Part(lm.lm_head.weight.numel(), 0, through(lm.lm_head)),
            und=Part(),
            und_tokens=cfg.num_und_tokens,
            gen_tokens=cfg.num_gen_tokens if cfg.generation else 0,
        )
        if cfg.und_encoder == "siglip":
            enc, aligner = model.vision_und_enc_model, model.vision_und_enc_aligner
            per_pos, fm.und_attention = _vit(enc)
            fm.und = Part(per_pos + aligner.weight.numel(), 0, own(enc))
        elif cfg.und_encoder in ("shared_gen", "vae_convnext"):
            enc = (
                model.vision_gen_enc_model if cfg.und_encoder == "shared_gen" else model.vision_und_enc_model
            )
            aligner = (
                model.vision_gen_enc_aligner
                if cfg.und_encoder == "shared_gen"
                else model.vision_und_enc_aligner
            )
            pos, img = _weights(enc)
            fm.und = Part(pos + aligner.weight.numel(), img, own(enc))
        if cfg.generation:
            enc_pos, enc_img = _weights(model.vision_gen_enc_model)
            fm.gen_enc = Part(enc_pos + model.vision_gen_enc_aligner.weight.numel(), enc_img,
                              own(model.vision_gen_enc_model))  # fmt: skip
            dec_pos, dec_img = _weights(model.vision_gen_dec_model)
            repa = _weights(getattr(model, "repa_head", None))[0]
            dec_parts = nn.ModuleList([model.vision_gen_dec_model, model.vision_gen_dec_aligner])
            fm.gen_dec = Part(
                dec_pos + model.vision_gen_dec_aligner.weight.numel() + repa, dec_img, through(dec_parts)
            )
            target = model.repa_target_encoder or getattr(model, "vision_und_enc_model", None)
            if hasattr(model, "repa_head") and hasattr(target, "vision_tower"):  # a SigLIP, run without grad
                per_pos, fm.repa_attention = _vit(target)
                fm.repa_target = Part(per_pos, 0, 0)
        return fm

    def step(
        self,
        batch: PackedBatch,
        attention: Literal["packed", "rows"] = "packed",
        tokens: Literal["real", "all"] = "real",
    ) -> dict[str, float]:
        """FLOPs of one forward + backward on ``batch``: ``flops(batch_counts(batch))``."""
        return self.flops({k: float(v) for k, v in batch_counts(batch).items()}, attention, tokens)

    def flops(
        self,
        counts: dict[str, float],
        attention: Literal["packed", "rows"] = "packed",
        tokens: Literal["real", "all"] = "real",
    ) -> dict[str, float]:
        """FLOPs by part (``llm``, ``attention``, ``lm_head``, ``und``, ``gen``, ``repa_target``) and
        ``total``, of batches whose ``batch_counts`` add up to ``counts`` (every term is linear in them).
        ``tokens="real"`` counts the LLM at the sample tokens only, ``"all"`` at every position, padding
        included (what runs); ``attention`` as in the module docstring."""
        c = counts
        n_tokens = c["real_tokens"] if tokens == "real" else c["all_tokens"]
        if attention == "packed":  # the padding attends only to itself: one block per row
            pairs = c["sample_pairs"] + (c["padding_pairs"] if tokens == "all" else 0.0)
        else:
            pairs = c["row_pairs"]
        n_und, n_gen = c["und_images"], c["gen_images"]

        def total(part: Part, positions: float, images: float) -> float:
            return 2.0 * (part.per_position * positions + part.per_image * images) * (1 + part.backward)

        layers, width, t_und = self.und_attention
        und_attn = 4.0 * layers * width * t_und**2 * n_und
        out = {
            "llm": total(self.llm, n_tokens, 0),
            "attention": 4.0 * self.num_layers * self.d_llm * pairs * (1 + (2 if self.llm.backward else 0)),
            "lm_head": total(self.lm_head, c["labels"], 0),
            "und": total(self.und, self.und_tokens * n_und, n_und) + und_attn * (1 + self.und.backward),
            "gen": total(self.gen_enc, self.gen_tokens * n_gen, n_gen)
            + total(self.gen_dec, self.gen_tokens * n_gen, n_gen),
            "repa_target": 0.0,
        }
        if self.repa_target.per_position:
            layers, width, t = self.repa_attention
            n = c["repa_images"]
            out["repa_target"] = total(self.repa_target, t * n, 0) + 4.0 * layers * width * t**2 * n
        out["total"] = sum(out.values())
        return out


def batch_counts(batch: PackedBatch) -> dict[str, torch.Tensor | int]:
    """What the FLOPs and the throughput of a batch depend on, as tensors on the batch's device (summing
    them over batches needs no host sync): samples, tokens (real, all positions), attention pairs (per
    sample, of the padding, of whole rows), labelled tokens, and images of each kind."""
    seg = batch.segment_ids  # (R, L), 0 = padding
    rows, length = seg.shape
    per_segment = torch.zeros(rows, length + 1, dtype=torch.long, device=seg.device)
    per_segment.scatter_add_(1, seg, torch.ones_like(seg))  # (R, L + 1): tokens of each segment id
    samples = per_segment[:, 1:]
    return {
        "samples": (samples > 0).sum(),
        "real_tokens": samples.sum(),
        "all_tokens": seg.numel(),
        "sample_pairs": samples.pow(2).sum(),
        "padding_pairs": per_segment[:, 0].pow(2).sum(),
        "row_pairs": rows * length**2,
        "labels": (batch.labels != IGNORE_INDEX).sum(),
        "und_images": batch.num_und,
        "gen_images": batch.num_gen,
        "repa_images": batch.num_gen if batch.repa_targets is None else 0,
    }


def _vit(encoder: nn.Module) -> tuple[int, tuple[int, int, int]]:
    """A SigLIP encoder's per-patch weight elements (patch embedding + the blocks it runs) and its
    attention sizes (blocks run, width, patches)."""
    tower = encoder.vision_tower
    depth = len(tower.blocks) if encoder.select_layer == -1 else encoder.select_layer
    per_pos = _weights(tower.patch_embed)[0] + sum(_weights(b)[0] for b in list(tower.blocks)[:depth])
    return per_pos, (depth, tower.embed_dim, tower.patch_embed.num_patches)
