"""The causal language model: any Llama-family transformers model."""

from __future__ import annotations

from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel

from jf_lightning.models.config import LLMConfig


def llama_config(cfg: LLMConfig) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=False,
    )


def build_llm(cfg: LLMConfig) -> PreTrainedModel:
    """The one loading path: ``from_pretrained`` on a hub id or local directory, or random init.

    Attention is transformers' SDPA: it takes the packed block-causal mask we build and runs on every
    device (``kernels.use_cpu_kernels`` switches it to a faster path for masked bf16 attention on CPU).
    """
    if cfg.source:
        model = AutoModelForCausalLM.from_pretrained(cfg.source, attn_implementation="sdpa")
        if model.config.hidden_size != cfg.hidden_size or model.config.num_hidden_layers != cfg.num_layers:
            raise ValueError(
                f"LLM {cfg.source!r} has hidden_size={model.config.hidden_size}, "
                f"num_layers={model.config.num_hidden_layers}; set llm.hidden_size / llm.num_layers to match"
            )
        return model
    return AutoModelForCausalLM.from_config(llama_config(cfg), attn_implementation="sdpa")
