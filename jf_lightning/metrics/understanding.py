"""Understanding accuracy: exact match of normalised short answers, overall and per question type, and
the held-out shapes-world question set it is measured on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from jf_lightning.data import shapes_world as world
from jf_lightning.metrics.prompting import normalize_answer

SCORED_TYPES = ("color", "count", "shape", "position")
"""Question types with a short exact answer. Captions are left out by default: exact match on a
multi-clause sentence measures the decoding budget more than understanding."""
# Mixed into the seed so held-out scenes never coincide with the shard writer's streams, which are
# seeded by 4-element keys (seed, split, kind, index).
_HELDOUT_STREAM = 0x5E1D


def exact_match_accuracy(
    predictions: Sequence[str], references: Sequence[str], types: Sequence[str]
) -> dict[str, float]:
    """``{"und_accuracy": mean, "und_accuracy/<type>": mean per type}`` over normalised exact matches.
    Empty input gives an empty dict (nothing to log rather than a fake 0)."""
    if not len(predictions) == len(references) == len(types):
        raise ValueError(
            f"lengths differ: {len(predictions)} predictions, {len(references)} references, {len(types)} types"
        )
    hits: dict[str, list[bool]] = {}
    for pred, ref, qtype in zip(predictions, references, types):
        hits.setdefault(qtype, []).append(normalize_answer(pred) == normalize_answer(ref))
    if not hits:
        return {}
    everything = [h for per_type in hits.values() for h in per_type]
    scores = {"und_accuracy": sum(everything) / len(everything)}
    scores.update({f"und_accuracy/{t}": sum(hits[t]) / len(hits[t]) for t in sorted(hits)})
    return scores


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

    Questions come from ``world.understanding_sample`` itself (the training distribution and phrasing),
    redrawn on the same scene until their type is in ``types``; ``image_after_question`` places the image
    as the training world does (``write_shapes_world``).
    """
    unknown = set(types) - set(world.QUESTION_TYPES)
    if unknown or not types:
        raise ValueError(
            f"question types must be a non-empty subset of {world.QUESTION_TYPES}, got {list(types)}"
        )
    return [
        _draw(np.random.default_rng([seed, _HELDOUT_STREAM, i]), types, image_after_question) for i in range(n)
    ]


def _draw(
    rng: np.random.Generator, types: Sequence[str], image_after_question: float, tries: int = 100
) -> HeldOutQuestion:
    for _ in range(tries):
        scene = world.sample_scene(rng)
        if not any(qa[0] in types for qa in world.questions_for_scene(scene)):
            continue  # e.g. only "color" asked, but no shape class is unique in this scene
        while (sample := world.understanding_sample(scene, rng, image_after_question=image_after_question))[
            "question_type"
        ] not in types:
            pass
        human, gpt = sample["conversations"]
        return HeldOutQuestion(scene, human["value"], gpt["value"], sample["question_type"])
    raise RuntimeError(f"no scene in {tries} supports the question types {list(types)}")
