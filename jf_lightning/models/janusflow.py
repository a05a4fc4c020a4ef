"""JanusFlow: one LLM that reads images through an understanding encoder and draws latents by
rectified flow through the generation encoder/decoder.

Top-level attribute names follow the released JanusFlow-1.3B checkpoint (``language_model``,
``vision_und_enc_model``, ``vision_und_enc_aligner``, ``beg_of_und_embed``, ``vision_gen_enc_model``,
``vision_gen_enc_aligner``, ``vision_gen_dec_model``, ``vision_gen_dec_aligner_norm``,
``vision_gen_dec_aligner``) so its state dict loads without renaming.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, LlamaModel
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from jf_lightning.batch import IGNORE_INDEX, PackedBatch
from jf_lightning.models.config import JanusFlowConfig
from jf_lightning.models.gen_codec import GenerationDecoder, GenerationEncoder
from jf_lightning.models.llm import build_llm
from jf_lightning.models.masking import additive_mask, packed_attention_mask, slot_blocks, slot_index
from jf_lightning.models.repa import RepaHead
from jf_lightning.models.und_encoder import SiglipEncoder, VaeConvNeXtEncoder, build_siglip
from jf_lightning.models.vae import LatentCodec, build_vae

# transformers renamed `past_key_values` to `cache` (5.x); pass whichever this release takes.
_CACHE_KWARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


@dataclass
class JanusFlowOutput:
    ar_loss: torch.Tensor | None
    """Mean cross-entropy over labelled tokens (None when the batch has none)."""
    num_ar_tokens: int
    """How many tokens ``ar_loss`` averages over."""
    velocity: torch.Tensor | None
    """(N_gen, C, h, w) predicted velocity at the generation slots."""
    repa_pred: torch.Tensor | None
    """(N_gen, T_gen, D_und) REPA head output on the block-k states at the latent tokens."""
    logits: torch.Tensor | None = None
    """(R, L, V) full next-token logits, only when asked for."""


class JanusFlow(nn.Module):
    """The composition. Parts that load weights (LLM, SigLIP, VAE) can be passed in, already built
    by ``load_janusflow``; anything not passed is built from the config with random init (no IO)."""

    def __init__(
        self,
        cfg: JanusFlowConfig,
        llm: nn.Module | None = None,
        siglip: SiglipEncoder | None = None,
        vae: LatentCodec | None = None,
    ):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d_llm = cfg.llm.hidden_size
        self.language_model = llm if llm is not None else build_llm(replace(cfg.llm, source=None))
        if cfg.needs_siglip and siglip is None:
            siglip = build_siglip(replace(cfg.siglip, source=None))
        if cfg.generation:
            self._build_generation(cfg, vae)
        self._build_understanding(cfg, siglip)
        self.repa_target_encoder = None
        if cfg.generation and cfg.repa.enabled:
            if cfg.repa.target == "siglip":
                self.repa_target_encoder = siglip.requires_grad_(False)
            self.repa_head = RepaHead(d_llm, cfg.repa.hidden_size, cfg.siglip.width)

    def _build_generation(self, cfg: JanusFlowConfig, vae: LatentCodec | None) -> None:
        d_llm, g = cfg.llm.hidden_size, cfg.gen_codec
        self.vae = (vae if vae is not None else build_vae(replace(cfg.vae, source=None))).requires_grad_(False)
        self.vision_gen_enc_model = GenerationEncoder(
            cfg.vae.latent_channels, g.width, d_llm, g.patch_size, g.num_blocks, g.norm_eps
        )
        self.vision_gen_enc_aligner = nn.Linear(g.width, d_llm)
        self.vision_gen_dec_aligner_norm = LlamaRMSNorm(d_llm, eps=cfg.llm.rms_norm_eps)
        self.vision_gen_dec_aligner = nn.Linear(d_llm, g.width)
        self.vision_gen_dec_model = GenerationDecoder(
            cfg.vae.latent_channels, g.width, d_llm, g.patch_size, g.num_blocks, g.norm_eps
        )

    def _build_understanding(self, cfg: JanusFlowConfig, siglip: SiglipEncoder | None) -> None:
        d_llm = cfg.llm.hidden_size
        if cfg.und_encoder == "none":
            return
        # A learned embedding in place of <begin_of_image> (zeros, as the release initialises it).
        self.beg_of_und_embed = nn.Parameter(torch.zeros(1, d_llm))
        if cfg.und_encoder == "siglip":
            self.vision_und_enc_model = siglip
            self.vision_und_enc_aligner = nn.Linear(cfg.siglip.width, d_llm)
        elif cfg.und_encoder == "vae_convnext":
            self.vision_und_enc_model = VaeConvNeXtEncoder(self.vae, self.vision_gen_enc_model)
            self.vision_und_enc_aligner = nn.Linear(cfg.gen_codec.width, d_llm)
        # "shared_gen" (ablation B) reuses the generation encoder and its aligner: nothing to build.

    # ----------------------------------------------------------------------------------- parts

    def always_frozen(self) -> list[nn.Module]:
        """Parts no stage ever trains: the VAE and a SigLIP kept only as the REPA target."""
        parts = [getattr(self, "vae", None), self.repa_target_encoder]
        return [p for p in parts if p is not None]

    def train(self, mode: bool = True) -> JanusFlow:
        super().train(mode)
        for part in self.always_frozen():
            part.eval()
        return self

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.language_model.get_input_embeddings()

    # ------------------------------------------------------------------------- image embeddings

    def embed_understanding(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, 1 + T_und, D_llm): begin embedding + aligned features."""
        if self.cfg.und_encoder == "shared_gen":
            latents = self.vae.encode(pixels).to(pixels.dtype)
            clean = torch.ones(pixels.shape[0], device=pixels.device)
            features, _ = self.vision_gen_enc_model(latents, clean)  # (N, W, g, g)
            tokens = self.vision_gen_enc_aligner(features.flatten(2).transpose(1, 2))  # (N, T, D)
        else:
            tokens = self.vision_und_enc_aligner(self.vision_und_enc_model(pixels))  # (N, T, D)
        begin = self.beg_of_und_embed.to(tokens.dtype).expand(tokens.shape[0], 1, -1)  # (N, 1, D)
        return torch.cat([begin, tokens], dim=1)

    def embed_generation(self, latents: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Noisy latents (N, C, h, w) at times t (N,) -> slot embeddings (N, 1 + T_gen, D_llm): the
        time token then the latent tokens; plus the skip map (N, W, g, g) and t_emb (N, D_llm)."""
        skip, t_emb = self.vision_gen_enc_model(latents, t)
        tokens = self.vision_gen_enc_aligner(skip.flatten(2).transpose(1, 2))  # (N, T_gen, D)
        return torch.cat([t_emb[:, None, :].to(tokens.dtype), tokens], dim=1), skip, t_emb

    def decode_velocity(self, states: torch.Tensor, skip: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """LLM outputs at the latent tokens (N, T_gen, D_llm) -> velocity (N, C, h, w)."""
        n, grid = states.shape[0], self.cfg.gen_grid
        x = self.vision_gen_dec_aligner(self.vision_gen_dec_aligner_norm(states))  # (N, T_gen, W)
        x = x.transpose(1, 2).reshape(n, -1, grid, grid)  # (N, W, g, g)
        return self.vision_gen_dec_model(x, skip, t_emb)

    @torch.no_grad()
    def repa_targets(self, batch: PackedBatch) -> torch.Tensor:
        """(N_gen, T, D_und) stop-gradient features of the clean generation images."""
        if batch.repa_targets is not None:
            return batch.repa_targets
        encoder = self.repa_target_encoder or self.vision_und_enc_model
        was_training = encoder.training
        encoder.eval()  # a target is a fixed function of the image: no dropout / drop-path
        targets = encoder(batch.gen_pixels)
        encoder.train(was_training)
        return targets

    # ---------------------------------------------------------------------------- packed forward

    def embed_batch(self, batch: PackedBatch, noisy_latents: torch.Tensor | None, t: torch.Tensor | None):
        """Token embeddings with every image slot overwritten. Returns (embeds (R, L, D), gen_aux)."""
        embeds = self.embed_tokens(batch.input_ids)  # (R, L, D)
        if batch.num_und:
            und = self.embed_understanding(batch.und_pixels.to(embeds.dtype))  # (N_und, 1+T, D)
            embeds = embeds.index_put(slot_index(batch.und_slots, und.shape[1]), und.to(embeds.dtype))
        gen_aux = None
        if batch.num_gen:
            gen, skip, t_emb = self.embed_generation(noisy_latents.to(embeds.dtype), t)
            embeds = embeds.index_put(slot_index(batch.gen_slots, gen.shape[1]), gen.to(embeds.dtype))
            gen_aux = (skip, t_emb)
        return embeds, gen_aux

    def forward(
        self,
        batch: PackedBatch,
        noisy_latents: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        return_logits: bool = False,
    ) -> JanusFlowOutput:
        """One pass over a packed batch. ``noisy_latents`` (N_gen, C, h, w) and ``t`` (N_gen,) are the
        flow inputs for the generation slots (the stage samples them: the model holds no randomness)."""
        embeds, gen_aux = self.embed_batch(batch, noisy_latents, t)
        blocks = None
        if batch.num_gen and self.cfg.gen_attention == "bidirectional":
            blocks = slot_blocks(batch.gen_slots, 1 + self.cfg.num_gen_tokens, batch.input_ids.shape)  # (R, L)
        mask = packed_attention_mask(batch.segment_ids, batch.key_mask, embeds.dtype, blocks)  # (R, 1, L, L)
        need_repa = batch.num_gen > 0 and hasattr(self, "repa_head")
        out = self.language_model.model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=batch.position_ids,
            output_hidden_states=need_repa,
            use_cache=False,
        )
        hidden = out.last_hidden_state  # (R, L, D), after the final norm
        ar_loss, n_ar = self._ar_loss(hidden, batch.labels)
        velocity = repa_pred = None
        if batch.num_gen:
            latent_index = slot_index(batch.gen_slots, 1 + self.cfg.num_gen_tokens, skip_first=True)
            velocity = self.decode_velocity(hidden[latent_index], *gen_aux)
            if need_repa:
                # hidden_states[k] is the output of block k (index 0 holds the input embeddings)
                repa_pred = self.repa_head(out.hidden_states[self.cfg.repa.layer][latent_index])
        logits = self.language_model.lm_head(hidden) if return_logits else None
        return JanusFlowOutput(ar_loss, n_ar, velocity, repa_pred, logits)

    def _ar_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor | None, int]:
        # The LM head runs only where there is a target: a packed row is mostly image tokens and
        # prompts, and full-vocabulary logits over all of them would dominate memory at 100k vocab.
        where = labels != IGNORE_INDEX  # (R, L)
        n = int(where.sum())
        if n == 0:
            return None, 0
        logits = self.language_model.lm_head(hidden[where])  # (n, V)
        return F.cross_entropy(logits.float(), labels[where]), n

    # -------------------------------------------------------------------------- cached inference

    @torch.no_grad()
    def prefill(self, embeds: torch.Tensor, key_mask: torch.Tensor, position_ids: torch.Tensor) -> DynamicCache:
        """Run a (left-padded) prompt once and keep its keys and values."""
        cache = DynamicCache(config=self.language_model.config)
        self.language_model.model(
            inputs_embeds=embeds,
            attention_mask=key_mask.long(),
            position_ids=position_ids,
            use_cache=True,
            **{_CACHE_KWARG: cache},
        )
        return cache

    @torch.no_grad()
    def velocity_with_cache(
        self, latents: torch.Tensor, t: torch.Tensor, cache: DynamicCache, prefix_mask: torch.Tensor, next_pos: torch.Tensor
    ) -> torch.Tensor:
        """One sampler step: only the time token and latent tokens run; the prompt comes from the cache.
        latents (B, C, h, w), t (B,), prefix_mask (B, P) bool, next_pos (B,) position of the time token."""
        prefix_len = cache.get_seq_length()
        gen, skip, t_emb = self.embed_generation(latents.to(self.embed_tokens.weight.dtype), t)  # (B, 1+T, D)
        steps = torch.arange(gen.shape[1], device=gen.device)
        position_ids = next_pos[:, None] + steps  # (B, 1+T)
        mask = torch.cat([prefix_mask, torch.ones_like(prefix_mask[:, :1]).expand(-1, gen.shape[1])], dim=1)
        if self.cfg.gen_attention == "causal":
            mask = mask.long()
        else:
            mask = self._bidirectional_step_mask(mask, gen.shape[1], gen.dtype)
        out = self.language_model.model(
            inputs_embeds=gen, attention_mask=mask, position_ids=position_ids, use_cache=True, **{_CACHE_KWARG: cache}
        )
        # Drop this step's tokens (a negative count: the form every transformers release accepts), so
        # the next step sees the prompt alone again.
        cache.crop(-(cache.get_seq_length() - prefix_len))
        return self.decode_velocity(out.last_hidden_state[:, 1:], skip, t_emb)

    @staticmethod
    def _bidirectional_step_mask(key_mask: torch.Tensor, num_queries: int, dtype: torch.dtype) -> torch.Tensor:
        """(B, P + S) visible keys -> (B, 1, S, P + S) additive mask: the S slot tokens see the visible
        prompt and each other (handed over in 4D: from a 2D mask transformers would build a causal one)."""
        return additive_mask(key_mask[:, None, None, :].expand(-1, 1, num_queries, -1), dtype)  # (B, 1, S, P + S)

    @torch.no_grad()
    def answer(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        und_pixels: torch.Tensor,
        und_slots: torch.Tensor,
        max_new_tokens: int = 16,
        top_p: float | None = None,
        temperature: float = 1.0,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> torch.Tensor:
        """Decode answers about images: greedy (``top_p=None``) or nucleus sampling, with the KV cache
        of transformers' ``generate``. input_ids (B, P) left-padded prompts whose understanding slots
        are given by und_slots (N, 2); returns (B, <= max_new_tokens) new token ids."""
        batch = replace_slots_only(input_ids, und_pixels, und_slots)
        embeds, _ = self.embed_batch(batch, None, None)  # (B, P, D)
        return self.language_model.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask.long(),
            max_new_tokens=max_new_tokens,
            do_sample=top_p is not None,
            top_p=top_p,
            temperature=temperature if top_p is not None else None,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )


def replace_slots_only(input_ids: torch.Tensor, und_pixels: torch.Tensor, und_slots: torch.Tensor) -> PackedBatch:
    """A PackedBatch carrying just what ``embed_batch`` reads for understanding prompts."""
    zeros = torch.zeros_like(input_ids)
    return PackedBatch(
        input_ids=input_ids,
        position_ids=zeros,
        segment_ids=zeros,
        labels=zeros,
        key_mask=torch.ones_like(input_ids, dtype=torch.bool),
        und_pixels=und_pixels,
        und_slots=und_slots,
        gen_pixels=und_pixels[:0],
        gen_slots=und_slots[:0],
        gen_prompt_dropped=torch.zeros(0, dtype=torch.bool, device=input_ids.device),
    )


def load_janusflow(cfg: JanusFlowConfig) -> JanusFlow:
    """Build a model, loading every part that names a ``source`` (hub id or local directory) through
    its library's own ``from_pretrained``/timm path; the rest is random init."""
    cfg.validate()
    llm = build_llm(cfg.llm)
    siglip = build_siglip(cfg.siglip) if cfg.needs_siglip else None
    vae = build_vae(cfg.vae) if cfg.generation else None
    return JanusFlow(cfg, llm=llm, siglip=siglip, vae=vae)
