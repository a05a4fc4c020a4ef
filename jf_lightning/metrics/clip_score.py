"""CLIP score, as the paper reports it: torchmetrics' ``CLIPScore`` (the mean over images of
``max(100 * cos(image embedding, prompt embedding), 0)``) with CLIP ViT-L/14.

The model comes from a hub id or a local directory in ``save_pretrained`` layout; it is handed to
torchmetrics as a loader, since torchmetrics itself accepts only a few hub ids by name. Under
``torch.distributed`` the metric sums its state over the processes when computed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


class ProjectedFeatures(torch.nn.Module):
    """A CLIPModel whose ``get_image_features`` / ``get_text_features`` return the projected embeddings
    as a tensor, as torchmetrics (1.9) expects: transformers 5 returns them as a ModelOutput's
    ``pooler_output``."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    @staticmethod
    def _tensor(out) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # (B, projection_dim)

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))


def load_clip(source: str = DEFAULT_CLIP):
    """(CLIP model, CLIPProcessor) from a hub id (cached) or a local directory, the model as
    :class:`ProjectedFeatures`; a one-line error naming both ways when neither holds it."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        return ProjectedFeatures(CLIPModel.from_pretrained(source).eval()), CLIPProcessor.from_pretrained(
            source
        )
    except OSError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(
            f"CLIP model {source!r} not found ({reason}): pass a local directory written by save_pretrained, "
            f"or put {DEFAULT_CLIP} in the Hugging Face cache (`hf download {DEFAULT_CLIP}`)"
        ) from None


def clip_score_metric(source: str = DEFAULT_CLIP, device: str | torch.device = "cpu", **kwargs):
    """torchmetrics' ``CLIPScore`` with the CLIP of ``source``; ``kwargs`` go to the Metric (e.g.
    ``sync_on_compute``)."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    return CLIPScore(model_name_or_path=lambda: load_clip(source), **kwargs).to(device)


@torch.no_grad()
def clip_score(metric, images: torch.Tensor, prompts: Sequence[str], batch_size: int = 32) -> float:
    """images: (N, 3, H, W) uint8 with their ``prompts`` -> the CLIP score over all of them (the
    metric is reset first)."""
    if len(images) != len(prompts):
        raise ValueError(f"CLIP score: {len(images)} images for {len(prompts)} prompts")
    metric.reset()
    for i in range(0, len(images), batch_size):
        metric.update(images[i : i + batch_size].to(metric.device), list(prompts[i : i + batch_size]))
    return float(metric.compute())
