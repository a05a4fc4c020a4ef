"""CLIP score of images the model draws from a prompt file (``val/clip_score``), as the paper reports
it: torchmetrics' ``CLIPScore`` with CLIP ViT-L/14. :class:`CLIPScorer` also rides along on the FID
callback's images (its ``clip_model``), which the paper scores both metrics on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch

from jf_lightning.callbacks.generated_images import GeneratedImagesCallback, ImageScorer
from jf_lightning.metrics.clip_score import DEFAULT_CLIP, clip_score_metric
from jf_lightning.metrics.prompt_files import balanced_subset, read_prompts


class CLIPScorer(ImageScorer):
    """Each rank updates the metric with its images (padding left out); computing it sums the state
    over the processes (torchmetrics' own sync), so every rank gets the score of all images."""

    def __init__(self, prompts: Sequence[str], model: str = DEFAULT_CLIP, key: str = "val/clip_score"):
        self.prompts, self.model, self.key = list(prompts), model, key
        self.metric = None

    def setup(self, trainer: pl.Trainer) -> None:
        if self.metric is None:
            self.metric = clip_score_metric(self.model, trainer.strategy.root_device)

    def reset(self) -> None:
        self.metric.reset()

    def update(self, images: torch.Tensor, index: Sequence[int]) -> None:
        rows = [j for j, i in enumerate(index) if i >= 0]
        if rows:
            self.metric.update(images[rows].to(self.metric.device), [self.prompts[index[j]] for j in rows])

    def compute(self, trainer: pl.Trainer) -> dict[str, float]:
        return {self.key: float(self.metric.compute())}


class CLIPScoreCallback(GeneratedImagesCallback):
    """CLIP score of ``num_images`` images of a prompt file (text lines, or MJHQ's ``meta_data.json``)."""

    name = "clip_score"

    def __init__(
        self,
        prompts: str,
        num_images: int | None = 10_000,
        model: str = DEFAULT_CLIP,
        key: str = "val/clip_score",
        **kwargs: Any,
    ):
        """
        Args:
            prompts: Prompt file: one prompt per line, or MJHQ-30K's ``meta_data.json``.
            num_images: Images drawn (taken in turn from each MJHQ category); null: one per prompt.
            model: The CLIP: a hub id (``openai/clip-vit-large-patch14``, the paper's) or a local
                ``save_pretrained`` directory.
            key: Metric name.
            kwargs: How the images are drawn (``steps``, ``cfg_weight``, ``seed``, ``batch_size``,
                ``template``, ``temperature``, ``grid_images``, ``every_n_steps``); see
                :class:`GeneratedImagesCallback`.
        """
        self.prompt_file, self.num_images = prompts, num_images
        self.clip = CLIPScorer([], model, key)
        super().__init__(None, [self.clip], **kwargs)

    def load_prompts(self) -> list[str]:
        self.clip.prompts = [e.text for e in balanced_subset(read_prompts(self.prompt_file), self.num_images)]
        return self.clip.prompts
