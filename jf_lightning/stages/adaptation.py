"""Stage 1, adaptation: only the new parts learn; the pretrained LLM and SigLIP stay frozen."""

from __future__ import annotations

from jf_lightning.stages.base import JanusFlowStage


class AdaptationStage(JanusFlowStage):
    """Table 1, stage 1: trains the aligners, the begin embedding, g_enc, g_dec and the REPA head
    (and C's ConvNeXt understanding encoder, which is new too). lr 1e-4, 2,000 warm-up steps. The REPA
    gradient still flows through the frozen LLM blocks 1..k into the generation encoder."""

    trainable_groups = ("adapters",)

    def __init__(self, lr: float = 1e-4, warmup_steps: int = 2000, **kwargs):
        """
        Args:
            lr: Peak AdamW learning rate, constant after the warm-up (Table 1: 1e-4) unless
                ``cooldown_steps`` decays it at the end.
            warmup_steps: Optimizer steps of linear warm-up (Table 1: 2,000).
            kwargs: The shared arguments of :class:`JanusFlowStage`.
        """
        super().__init__(lr=lr, warmup_steps=warmup_steps, **kwargs)
