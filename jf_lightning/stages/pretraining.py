"""Stage 2, unified pre-training: everything but SigLIP learns."""

from __future__ import annotations

from jf_lightning.stages.base import JanusFlowStage


class PretrainingStage(JanusFlowStage):
    """Table 1, stage 2: trains the LLM and all new parts; SigLIP (and the VAE) stay frozen.
    lr 1e-4, 2,000 warm-up steps."""

    trainable_groups = ("llm", "adapters")

    def __init__(self, lr: float = 1e-4, warmup_steps: int = 2000, **kwargs):
        """
        Args:
            lr: Peak AdamW learning rate, constant after the warm-up (Table 1: 1e-4) unless
                ``cooldown_steps`` decays it at the end.
            warmup_steps: Optimizer steps of linear warm-up (Table 1: 2,000).
            kwargs: The shared arguments of :class:`JanusFlowStage`.
        """
        super().__init__(lr=lr, warmup_steps=warmup_steps, **kwargs)
