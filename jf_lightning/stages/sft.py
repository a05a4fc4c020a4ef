"""Stage 3, supervised fine-tuning: SigLIP is unfrozen too."""

from __future__ import annotations

from jf_lightning.stages.base import JanusFlowStage


class SFTStage(JanusFlowStage):
    """Table 1, stage 3: trains everything except the VAE and a SigLIP kept only as the REPA target.
    lr 2e-5, 1,000 warm-up steps. REPA targets stay stop-gradient even though SigLIP trains."""

    trainable_groups = ("llm", "siglip", "adapters")

    def __init__(self, lr: float = 2e-5, warmup_steps: int = 1000, **kwargs):
        """
        Args:
            lr: Peak AdamW learning rate, constant after the warm-up (Table 1: 2e-5) unless
                ``cooldown_steps`` decays it at the end.
            warmup_steps: Optimizer steps of linear warm-up (Table 1: 1,000).
            kwargs: The shared arguments of :class:`JanusFlowStage`.
        """
        super().__init__(lr=lr, warmup_steps=warmup_steps, **kwargs)
