"""The shapes world's inputs as :class:`PreparedInput` s: a config lists them under ``prepare`` and
``python -m jf_lightning prepare -c <config>`` writes them (idempotent: a directory already holding the
same thing is left as it is)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jf_lightning.inputs import PreparedInput, UserInputError
from jf_lightning.shapes.shards import world_ready, write_shapes_world
from jf_lightning.shapes.siglip_pretraining import SiglipPretrainingConfig, pretrain_siglip, siglip_ready


class ShapesWorld(PreparedInput):
    """The shapes world's shards and tokenizer (``shapes.shards.write_shapes_world``)."""

    def __init__(
        self,
        out_dir: str,
        seed: int = 0,
        train_samples: int = 10_000,
        val_samples: int = 500,
        image_size: int = 64,
        samples_per_shard: int = 5_000,
        generation_mix: dict[str, float] | None = None,
        question_mix: dict[str, float] | None = None,
        questions_per_image: int = 1,
        image_after_question: float = 0.0,
    ):
        """
        Args:
            out_dir: Where the world goes (shards per kind and split, ``tokenizer/``, ``manifest.json``).
            seed: Seeds every scene, prompt, question and sentence.
            train_samples: Training samples of each kind (und, gen, text).
            val_samples: Validation samples of each kind.
            image_size: Side of the rendered images, in pixels (>= 32).
            samples_per_shard: Samples per tar shard.
            generation_mix: Weights of the generation prompts over ``caption`` and GenEval's six tasks.
            question_mix: Weights of the understanding question types.
            questions_per_image: Questions per understanding sample (a multi-turn conversation).
            image_after_question: Share of understanding samples that ask first and show the image after.
        """
        self.out_dir = out_dir
        self.params: dict[str, Any] = {
            "seed": seed, "train_samples": train_samples, "val_samples": val_samples, "image_size": image_size,
            "samples_per_shard": samples_per_shard, "generation_mix": generation_mix, "question_mix": question_mix,
            "questions_per_image": questions_per_image, "image_after_question": image_after_question,
        }  # fmt: skip

    @property
    def path(self) -> Path:
        return Path(self.out_dir)

    def ready(self) -> bool:
        try:
            return world_ready(self.out_dir, **self.params)
        except ValueError as err:
            raise UserInputError(f"prepare: {err}") from None

    def prepare(self) -> None:
        print(f"writing the shapes world into {self.out_dir} ...", flush=True)
        write_shapes_world(self.out_dir, **self.params)


class ShapesSiglip(PreparedInput):
    """A SigLIP pretrained on a shapes world (``shapes.siglip_pretraining``); point the model's
    ``siglip.source`` at the same ``out_dir``."""

    def __init__(
        self,
        out_dir: str,
        world: str,
        preset: str = "tiny",
        steps: int = 600,
        batch_size: int = 64,
        lr: float = 1e-3,
        warmup_steps: int = 50,
        seed: int = 0,
        max_text_len: int = 48,
        dense_weight: float = 0.0,
    ):
        """
        Args:
            out_dir: Where the vision tower goes (timm format) with its ``pretraining.json``.
            world: The shapes world it learns from (list it before this input under ``prepare``).
            preset: Model preset whose ``siglip`` dims are built.
            steps: Optimizer steps.
            batch_size: Image-caption pairs per step.
            lr: Peak learning rate (AdamW, linear warm-up, then constant).
            warmup_steps: Steps of linear warm-up.
            seed: Seeds the init and the pair order.
            max_text_len: Captions are cut or padded to this many tokens.
            dense_weight: Weight of the per-patch (shape, colour) loss; 0 = SigLIP's sigmoid loss alone.
        """
        self.out_dir = out_dir
        self.config = SiglipPretrainingConfig(
            world=world, preset=preset, steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
            seed=seed, max_text_len=max_text_len, dense_weight=dense_weight,
        )  # fmt: skip

    @property
    def path(self) -> Path:
        return Path(self.out_dir)

    def ready(self) -> bool:
        try:
            return siglip_ready(self.out_dir, self.config)
        except ValueError as err:
            raise UserInputError(f"prepare: {err}") from None

    def prepare(self) -> None:
        print(f"pretraining the shapes SigLIP into {self.out_dir} ...", flush=True)
        pretrain_siglip(self.out_dir, self.config)
