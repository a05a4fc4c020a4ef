"""GenEval during training: one image per prompt of a GenEval prompt set, scored by a detector and
GenEval's rules (:mod:`jf_lightning.metrics.geneval`), on the shared evaluation machinery (EMA weights,
prompts split over ranks, own cadence, ``val/time/<name>``, an optional grid to MLflow).

Logged under ``prefix`` (``val/geneval`` by default): ``<task>`` for each task, ``overall``, their mean
(GenEval's "average over tasks"), ``empty``, the share of images in which the detector found no object
above GenEval's threshold, and ``count_bias``, the mean over all images of (objects found - objects the
prompt asks for). The last two name failures no task score does: a generator that loses its object in
the first sampler steps, or draws one object more or fewer than asked.

Real images: ``detector: jf_lightning.metrics.mask2former_detector.Mask2FormerDetector`` (Mask2Former
on COCO with CLIP colours, moved to each rank's device) and ``prompts: GenEvalMetadataFile`` (GenEval's
553 prompts, or the first ``n_per_task`` of each task). A synthetic world plugs in its own of both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from jf_lightning.callbacks.evaluation import first_rows, gather_rows, rank_share, save_grid
from jf_lightning.callbacks.generated_images import GeneratedImagesCallback, ImageScorer
from jf_lightning.data.templates import TemplateStyle
from jf_lightning.inference.images import make_grid, resize_images
from jf_lightning.metrics.geneval import Detector, GenEvalOptions, GenEvalPrompts, score_image, summarize


def objects_asked(spec: Mapping[str, Any]) -> int:
    """How many objects a GenEval spec's prompt asks for: the sum of its ``include`` counts."""
    return sum(int(req["count"]) for req in spec.get("include", []))


class GenEvalScorer(ImageScorer):
    """GenEval's outcome of each image, gathered over the ranks into the task scores."""

    def __init__(
        self,
        specs: Sequence[Mapping[str, Any]],
        detector: Detector,
        options: GenEvalOptions,
        image_size: int | None,
    ):
        self.specs, self.detector, self.options, self.image_size = list(specs), detector, options, image_size
        self.reset()

    def reset(self) -> None:
        self.index: list[int] = []
        self.rows: list[tuple[int, int]] = []  # per image: correct, objects found (at most 255)

    def update(self, images: torch.Tensor, index: Sequence[int]) -> None:
        images = resize_images(images, self.image_size)  # (b, 3, S, S) uint8
        for image, i in zip(images, index, strict=True):
            self.index.append(i)
            self.rows.append(self.outcome(image, self.specs[max(i, 0)]))  # padding: scored, then dropped

    def outcome(self, image: torch.Tensor, spec: Mapping[str, Any]) -> tuple[int, int]:
        """(3, H, W) uint8 -> (correct under GenEval's rules, objects found above its threshold)."""
        rgb = np.ascontiguousarray(image.permute(1, 2, 0).numpy())  # (H, W, 3)
        detections = self.detector.detect(rgb)
        correct, _, _ = score_image(self.detector, rgb, spec, self.options, detections=detections)
        return int(correct), min(sum(d.score > self.options.threshold for d in detections), 255)

    def compute(self, trainer: pl.Trainer) -> dict[str, float]:
        # uint8, not bool: every backend (NCCL included) all-gathers it
        rows = torch.tensor(self.rows, dtype=torch.uint8).reshape(-1, 2)  # (k, 2)
        outcomes = gather_rows(trainer, self.index, rows, len(self.specs))  # (N, 2), spec order
        scores = summarize((spec["tag"], bool(ok)) for spec, ok in zip(self.specs, outcomes[:, 0]))
        found = outcomes[:, 1].float()  # (N,)
        asked = torch.tensor([objects_asked(spec) for spec in self.specs], dtype=torch.float32)  # (N,)
        return {**scores, "empty": (found == 0).float().mean().item(),
                "count_bias": (found - asked).mean().item()}  # fmt: skip


class GenEvalCallback(GeneratedImagesCallback):
    """Scores the model (its EMA weights) on a GenEval prompt set; every rank draws a disjoint share.
    Image ``i`` of the set uses noise seed ``seed + i``, so scores depend on neither the number of
    ranks nor the batch size."""

    def __init__(
        self,
        prompts: GenEvalPrompts,
        detector: Detector,
        prefix: str = "val/geneval",
        steps: int = 30,
        cfg_weight: float | None = 2.0,
        image_size: int | None = None,
        seed: int = 0,
        batch_size: int = 16,
        template: TemplateStyle | None = None,
        options: GenEvalOptions | None = None,
        temperature: float = 1.0,
        grid_images: int = 0,
        every_n_steps: int | None = None,
    ):
        """
        Args:
            prompts: The prompt set (GenEval's metadata file, or a synthetic world's).
            detector: Finds the objects GenEval's rules score (moved to the model's device when it has ``to``).
            prefix: Metric name prefix: ``<prefix>/<task>``, ``<prefix>/overall``, ...; its last part
                names the time, ``val/time/<last part>``.
            steps: Euler steps of the sampler.
            cfg_weight: Classifier-free guidance weight; null samples the conditional branch alone.
            image_size: Resize generated images to this side before detection; null keeps them.
            seed: Prompt ``i`` is drawn with noise seed ``seed + i``.
            batch_size: Images generated per sampler call, per rank.
            template: Prompt template (``pretrain`` / ``sft``); null takes the datamodule's.
            options: GenEval's thresholds; null: GenEval's defaults.
            temperature: Scale of the initial noise (below 1: fewer, surer objects).
            grid_images: How many of the first images go into a captioned grid logged to MLflow (0: none).
            every_n_steps: Run every this many optimizer steps instead of at every validation.
        """
        specs = prompts.specs()
        if not specs:
            raise ValueError("GenEvalCallback: the prompt set is empty")
        # the items handed to generate() are the specs themselves (their prompt is drawn)
        super().__init__(
            prompts=specs, scorers=[], steps=steps, cfg_weight=cfg_weight, seed=seed, batch_size=batch_size,
            template=template, temperature=temperature, grid_images=grid_images, every_n_steps=every_n_steps,
        )  # fmt: skip
        self.prefix, self.image_size, self.detector = prefix.rstrip("/"), image_size, detector
        self.name = self.prefix.rsplit("/", 1)[-1]
        self.options = options or GenEvalOptions()
        self.specs = specs

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """``{task: accuracy, ..., "overall": mean, "empty": share of empty images, "count_bias": mean
        objects found minus asked}`` over the whole prompt set, on every rank.

        The shared loop of :class:`GeneratedImagesCallback`, with the scorer made per call: its state
        stays with this evaluation (callers that run ranks as threads share the callback)."""
        if self.cannot_draw(pl_module):
            return {}
        if callable(getattr(self.detector, "to", None)):
            self.detector.to(pl_module.device)
        scorer = GenEvalScorer(self.specs, self.detector, self.options, self.image_size)
        share = rank_share(len(self.specs), trainer.global_rank, trainer.world_size)
        keep = first_rows(share, self.grid_images, trainer.world_size)
        kept: list[torch.Tensor] = []  # this rank's first `keep` images, for the grid
        for start in range(0, len(share), self.batch_size):
            index = share[start : start + self.batch_size]
            mine = [max(i, 0) for i in index]  # padding entries redo spec 0; the scorer drops them
            images = self.generate(
                trainer, pl_module, [self.specs[i] for i in mine], [self.seed + i for i in mine]
            )
            scorer.update(images, index)
            if start < keep:
                kept.append(images[: keep - start])
        if self.grid_images:
            self.log_grid(trainer, share[:keep], torch.cat(kept))
        return scorer.compute(trainer)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        metrics = super().run(trainer, pl_module)
        time_key = f"val/time/{self.name}"
        return {key if key == time_key else f"{self.prefix}/{key}": value for key, value in metrics.items()}

    def generate(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        specs: Sequence[Mapping[str, Any]],
        seeds: list[int],
    ) -> torch.Tensor:
        """(k, 3, H, W) uint8: one image per spec's prompt (the seam tests replace with an oracle)."""
        return super().generate(trainer, pl_module, [spec["prompt"] for spec in specs], seeds)

    def log_grid(self, trainer: pl.Trainer, index: Sequence[int], images: torch.Tensor) -> None:
        index = [i if i < self.grid_images else -1 for i in index]
        images = gather_rows(trainer, index, images, self.grid_images)  # (G, 3, H, W) uint8, spec order
        if trainer.is_global_zero:
            captions = [spec["prompt"] for spec in self.specs[: self.grid_images]]
            grid = make_grid(images, captions, nrow=min(8, self.grid_images))
            save_grid(trainer, grid, "samples", f"{self.name}_step_{trainer.global_step:06d}.png")
