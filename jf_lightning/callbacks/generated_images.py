"""Evaluation on images the model draws from a prompt list: the generating half every image metric
(FID, CLIP score, ...) shares.

The prompt list is split over the ranks (:func:`rank_share`: a strided, equal share per rank, so every
rank runs the same number of sampler calls) and drawn batch by batch; each batch goes to the callback's
:class:`ImageScorer` s at once, so no rank holds more than a batch of images (10,000 images at 256 px
would be 2 GB). Item ``i`` uses noise seed ``seed + i``: scores depend on neither the number of ranks
nor the batch size. The first ``grid_images`` images are gathered to rank 0 and saved as a captioned
grid under ``<run dir>/samples/<name>_step_XXXXXX.png``, logged to MLflow beside the numbers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from jf_lightning.callbacks.evaluation import (
    EvaluationCallback,
    first_rows,
    gather_rows,
    rank_share,
    render_prompts,
    save_grid,
    templater_for,
)
from jf_lightning.data.templates import TemplateStyle
from jf_lightning.inference.images import make_grid


class ImageScorer(ABC):
    """A metric fed generated images batch by batch on every rank and computed on every rank."""

    def setup(self, trainer: pl.Trainer) -> None:
        """Load models (on ``trainer.strategy.root_device``) and data; every rank calls it once per run."""

    @abstractmethod
    def reset(self) -> None:
        """Forget the images of an earlier run."""

    @abstractmethod
    def update(self, images: torch.Tensor, index: Sequence[int]) -> None:
        """images: (b, 3, H, W) uint8 of items ``index`` (positions in the prompt list; -1 marks a
        padding entry that only keeps the ranks in step, and must not be counted)."""

    @abstractmethod
    def compute(self, trainer: pl.Trainer) -> dict[str, float]:
        """Full metric names -> values over every rank's images, identical on every rank (every rank
        calls this: it may gather)."""


class GeneratedImagesCallback(EvaluationCallback):
    """Draws one image per prompt with the model (EMA weights) and hands them to ``scorers``."""

    def __init__(
        self,
        prompts: Sequence[str] | None,
        scorers: Sequence[ImageScorer],
        steps: int = 30,
        cfg_weight: float | None = 7.5,
        seed: int = 0,
        batch_size: int = 16,
        template: TemplateStyle | None = None,
        temperature: float = 1.0,
        grid_images: int = 16,
        every_n_steps: int | None = None,
    ):
        """
        Args:
            prompts: One image per prompt, item ``i`` with noise seed ``seed + i``; None: a subclass
                reads them in :meth:`load_prompts`.
            scorers: The metrics fed with every image.
            steps: Euler steps of the sampler.
            cfg_weight: Classifier-free guidance weight; null samples the conditional branch alone.
            seed: Item ``i`` is drawn with noise seed ``seed + i``.
            batch_size: Images generated per sampler call, per rank.
            template: Prompt template (``pretrain`` / ``sft``); null takes the datamodule's.
            temperature: Scale of the initial noise.
            grid_images: How many of the first images go into the logged grid (0: none).
            every_n_steps: Run every this many optimizer steps instead of at every validation.
        """
        super().__init__(every_n_steps)
        if prompts is not None and not prompts:
            raise ValueError(f"{type(self).__name__}: the prompt list is empty")
        if batch_size < 1 or grid_images < 0:
            raise ValueError(f"{type(self).__name__}: batch_size must be >= 1 and grid_images >= 0")
        self.prompts, self.scorers = list(prompts or []), list(scorers)
        self.steps, self.cfg_weight, self.seed = steps, cfg_weight, seed
        self.batch_size, self.template, self.temperature = batch_size, template, temperature
        self.grid_images = min(grid_images, len(self.prompts)) if self.prompts else grid_images

    def load_prompts(self) -> list[str]:
        """The prompt list of a subclass that reads it from a file: at ``setup``, not at construction,
        since a config's callbacks are built before ``prepare`` makes the files they name."""
        raise ValueError(f"{type(self).__name__}: no prompts")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.prompts:
            self.prompts = self.load_prompts()
            if not self.prompts:
                raise ValueError(f"{type(self).__name__}: the prompt list is empty")
            self.grid_images = min(self.grid_images, len(self.prompts))
        for scorer in self.scorers:
            scorer.setup(trainer)

    def cannot_draw(self, pl_module: pl.LightningModule) -> bool:
        """True, after a warning, for a model without generation modules (ablation D): an overlay's
        callbacks (``smoke.yaml``'s) meet every recipe's model."""
        cfg = getattr(getattr(pl_module, "model", None), "cfg", None)
        if cfg is not None and not cfg.generation:
            rank_zero_warn(f"{type(self).__name__}: the model has no generation modules (ablation D): nothing scored")
            return True
        return False

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        if self.cannot_draw(pl_module):
            return {}
        share = rank_share(len(self.prompts), trainer.global_rank, trainer.world_size)
        for scorer in self.scorers:
            scorer.reset()
        keep = first_rows(share, self.grid_images, trainer.world_size)
        kept: list[torch.Tensor] = []  # this rank's first `keep` images, for the grid
        for start in range(0, len(share), self.batch_size):
            index = share[start : start + self.batch_size]
            mine = [max(i, 0) for i in index]  # padding entries redo item 0; scorers skip them
            images = self.generate(
                trainer, pl_module, [self.prompts[i] for i in mine], [self.seed + i for i in mine]
            )
            for scorer in self.scorers:
                scorer.update(images, index)
            if start < keep:
                kept.append(images[: keep - start])
        if self.grid_images:
            self.log_grid(trainer, share[:keep], torch.cat(kept))
        metrics: dict[str, float] = {}
        for scorer in self.scorers:
            metrics.update(scorer.compute(trainer))
        return metrics

    def generate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, prompts: list[str], seeds: list[int]
    ) -> torch.Tensor:
        """(b, 3, H, W) uint8: one image per prompt (the seam tests replace with known images)."""
        templater = templater_for(trainer, pl_module, self.template)
        return render_prompts(
            trainer, pl_module, templater, prompts, seeds, self.steps, self.cfg_weight, self.batch_size,
            self.temperature,
        )  # fmt: skip

    def log_grid(self, trainer: pl.Trainer, index: Sequence[int], images: torch.Tensor) -> None:
        """Gather the first ``grid_images`` images to every rank; rank 0 saves and logs them."""
        index = [i if i < self.grid_images else -1 for i in index]
        images = gather_rows(trainer, index, images, self.grid_images)  # (G, 3, H, W) uint8, item order
        if trainer.is_global_zero:
            captions = self.prompts[: self.grid_images]
            grid = make_grid(images, captions, nrow=min(8, self.grid_images))
            save_grid(trainer, grid, "samples", f"{self.name}_step_{trainer.global_step:06d}.png")
