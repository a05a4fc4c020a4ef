"""GenEval at the end of every validation epoch: one image per prompt of a GenEval prompt set, scored
by a detector and GenEval's rules.

Logged under ``prefix`` (``val/geneval`` by default): ``<task>`` for each task, ``overall``, their mean
(GenEval's "average over tasks"), ``empty``, the share of images in which the detector found no object,
and ``count_bias``, the mean over all images of (objects detected - objects the prompt asks for). The
last two name failures no task score does: a generator that loses its object in the first sampler
steps, or draws one object more or fewer than asked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from jf_lightning.callbacks.evaluation import (
    evaluation_mode,
    gather_rows,
    rank_share,
    render_prompts,
    templater_for,
)
from jf_lightning.data.templates import TemplateStyle
from jf_lightning.inference.images import resize_images
from jf_lightning.metrics.geneval import Detector, GenEvalOptions, GenEvalPrompts, evaluate_image, summarize


class GenEvalCallback(Callback):
    """Scores the model (the EMA weights, which the EMA callback swaps in for validation) on a GenEval
    prompt set; every rank draws a disjoint share. Image ``i`` of the set uses noise seed ``seed + i``,
    so scores do not depend on the number of ranks or the batch size.
    """

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
    ):
        """
        Args:
            prompts: The prompt set (GenEval's metadata file, or a synthetic world's).
            detector: Finds the objects GenEval's rules score.
            prefix: Metric name prefix: ``<prefix>/<task>``, ``<prefix>/overall``, ...
            steps: Euler steps of the sampler.
            cfg_weight: Classifier-free guidance weight; null samples the conditional branch alone.
            image_size: Resize generated images to this side before detection; null keeps them.
            seed: Prompt ``i`` is drawn with noise seed ``seed + i``.
            batch_size: Images generated per sampler call, per rank.
            template: Prompt template (``pretrain`` / ``sft``); null takes the datamodule's.
            options: GenEval's thresholds; null: GenEval's defaults.
            temperature: Scale of the initial noise (below 1: fewer, surer objects).
        """
        if batch_size < 1:
            raise ValueError(f"GenEvalCallback: batch_size={batch_size} must be >= 1")
        self.prefix, self.steps, self.cfg_weight = prefix.rstrip("/"), steps, cfg_weight
        self.image_size, self.seed, self.batch_size = image_size, seed, batch_size
        self.temperature = temperature
        self.detector, self.template = detector, template
        self.options = options or GenEvalOptions()
        self.specs = prompts.specs()
        if not self.specs:
            raise ValueError("GenEvalCallback: the prompt set is empty")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for name, value in self.evaluate(trainer, pl_module).items():
            # identical on every rank already; sync_dist keeps every rank's logged value (and any
            # checkpoint monitor on it) well defined at the cost of one tiny all-reduce
            pl_module.log(f"{self.prefix}/{name}", value, sync_dist=True)

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """``{task: accuracy, ..., "overall": mean, "empty": share of empty images, "count_bias": mean
        objects detected minus asked}`` over the whole prompt set, on every rank."""
        share = rank_share(len(self.specs), trainer.global_rank, trainer.world_size)
        mine = [max(i, 0) for i in share]  # padding entries redo spec 0 and are dropped on gather
        specs = [self.specs[i] for i in mine]
        with evaluation_mode(pl_module):
            images = self.generate(trainer, pl_module, specs, [self.seed + i for i in mine])
        images = resize_images(images, self.image_size)  # (k, 3, S, S) uint8
        # uint8, not bool: every backend (NCCL included) all-gathers it
        outcomes = torch.tensor(
            [self.outcome(img, spec) for img, spec in zip(images, specs, strict=True)], dtype=torch.uint8
        )  # (k, 2): correct, objects detected
        outcomes = gather_rows(trainer, share, outcomes, len(self.specs))  # (N, 2), spec order
        scores = summarize((spec["tag"], bool(ok)) for spec, ok in zip(self.specs, outcomes[:, 0]))
        detected = outcomes[:, 1].float()  # (N,)
        asked = torch.tensor([objects_asked(spec) for spec in self.specs], dtype=torch.float32)  # (N,)
        return {**scores, "empty": (detected == 0).float().mean().item(),
                "count_bias": (detected - asked).mean().item()}  # fmt: skip

    def generate(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        specs: Sequence[Mapping[str, Any]],
        seeds: list[int],
    ) -> torch.Tensor:
        """(k, 3, H, W) uint8: one image per spec's prompt (the seam tests replace with an oracle)."""
        templater = templater_for(trainer, pl_module, self.template)
        prompts = [spec["prompt"] for spec in specs]
        return render_prompts(
            trainer, pl_module, templater, prompts, seeds, self.steps, self.cfg_weight, self.batch_size,
            self.temperature,
        )

    def outcome(self, image: torch.Tensor, spec: Mapping[str, Any]) -> tuple[bool, int]:
        """(3, H, W) uint8 -> (does it satisfy the spec under GenEval's rules, objects detected (at most 255))."""
        detections = self.detector.detect(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
        return evaluate_image(detections, spec, self.options)[0], min(len(detections), 255)


def objects_asked(spec: Mapping[str, Any]) -> int:
    """How many objects a GenEval spec's prompt asks for: the sum of its ``include`` counts."""
    return sum(int(req["count"]) for req in spec.get("include", []))
