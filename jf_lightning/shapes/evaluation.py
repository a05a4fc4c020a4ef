"""The shapes world's evaluation sets: GenEval-format prompts (``geneval_eval_specs``) and held-out
questions about fresh scenes, asked in the training data's own phrasing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from jf_lightning.metrics.geneval import GenEvalPrompts
from jf_lightning.metrics.understanding import Question, QuestionSet
from jf_lightning.shapes import language, world
from jf_lightning.shapes.geneval_specs import geneval_eval_specs

SCORED_TYPES = ("color", "count", "shape", "position")
"""Question types with a short exact answer. Captions are left out by default: exact match on a
multi-clause sentence measures the decoding budget more than understanding."""
# Mixed into the seed so held-out scenes never coincide with the shard writer's streams, which are
# seeded by 4-element keys (seed, split, kind, index).
_HELDOUT_STREAM = 0x5E1D


class ShapesGenEvalPrompts(GenEvalPrompts):
    """``n_per_task`` GenEval-format prompts per task of the shapes world, drawn once from ``seed``."""

    def __init__(self, n_per_task: int = 8, seed: int = 0):
        if n_per_task < 1:
            raise ValueError(f"n_per_task={n_per_task} must be >= 1")
        self.n_per_task, self.seed = n_per_task, seed

    def specs(self) -> list[dict[str, Any]]:
        return geneval_eval_specs(self.seed, self.n_per_task)


class ShapesHeldOutQuestions(QuestionSet):
    """``n_questions`` held-out questions (types in ``question_types``), one fresh scene each, rendered
    at the model's image size; ``image_after_question`` places the image as the training world does
    (set it as the world's ``image_after_question``)."""

    def __init__(
        self,
        n_questions: int = 64,
        seed: int = 0,
        question_types: Sequence[str] = SCORED_TYPES,
        image_after_question: float = 0.0,
    ):
        if n_questions < 1:
            raise ValueError(f"n_questions={n_questions} must be >= 1")
        self.held_out = heldout_questions(seed, n_questions, tuple(question_types), image_after_question)

    def questions(self, image_size: int) -> list[Question]:
        return [Question(q.image(image_size), q.question, q.answer, q.question_type) for q in self.held_out]


@dataclass(frozen=True)
class HeldOutQuestion:
    scene: world.Scene
    question: str
    """The human turn exactly as the shards write it (``"<image>\\n<question>"``)."""
    answer: str
    question_type: str

    def image(self, size: int) -> Image.Image:
        return world.render_scene(self.scene, size)


def heldout_questions(
    seed: int, n: int, types: Sequence[str] = SCORED_TYPES, image_after_question: float = 0.0
) -> list[HeldOutQuestion]:
    """``n`` questions, one fresh scene each, from a stream disjoint from the training shards.

    Questions come from ``language.understanding_sample`` itself (the training distribution and phrasing),
    redrawn on the same scene until their type is in ``types``; ``image_after_question`` places the image
    as the training world does (``write_shapes_world``).
    """
    unknown = set(types) - set(language.QUESTION_TYPES)
    if unknown or not types:
        raise ValueError(
            f"question types must be a non-empty subset of {language.QUESTION_TYPES}, got {list(types)}"
        )
    return [
        _draw(np.random.default_rng([seed, _HELDOUT_STREAM, i]), types, image_after_question) for i in range(n)
    ]


def _draw(
    rng: np.random.Generator, types: Sequence[str], image_after_question: float, tries: int = 100
) -> HeldOutQuestion:
    for _ in range(tries):
        scene = world.sample_scene(rng)
        if not any(qa[0] in types for qa in language.questions_for_scene(scene)):
            continue  # e.g. only "color" asked, but no shape class is unique in this scene
        while (sample := language.understanding_sample(scene, rng, image_after_question=image_after_question))[
            "question_type"
        ] not in types:
            pass
        human, gpt = sample["conversations"]
        return HeldOutQuestion(scene, human["value"], gpt["value"], sample["question_type"])
    raise RuntimeError(f"no scene in {tries} supports the question types {list(types)}")
