"""One LightningModule per training stage (Table 1) on a shared base."""

from jf_lightning.stages.adaptation import AdaptationStage
from jf_lightning.stages.base import JanusFlowStage
from jf_lightning.stages.pretraining import PretrainingStage
from jf_lightning.stages.sft import SFTStage

__all__ = ["AdaptationStage", "JanusFlowStage", "PretrainingStage", "SFTStage"]
