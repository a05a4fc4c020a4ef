"""The shapes world's language: captions, understanding questions with short exact answers,
generation prompts (GenEval-phrased or free captions) and text-only sentences, all drawn from a scene
and a ``numpy.random.Generator``; and the vocabulary they use (which the world's tokenizer is built on)."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np

from jf_lightning.metrics.geneval import GENEVAL_TASKS, RELATIONS, relative_position
from jf_lightning.shapes.geneval_specs import _all_specs, scene_for_spec, specs_for_scene
from jf_lightning.shapes.world import (
    COLOR_NAMES,
    MAX_SHAPES,
    NUMBER_WORDS,
    PLACES,
    PLURALS,
    SHAPES,
    Scene,
    Shape,
    sample_scene,
)

CAPTION_REQUEST = "Generate the caption of this picture."
QUESTION_TYPES = ("caption", "color", "count", "shape", "position")
CAPTION_FRACTION = 0.25  # generation prompts that are free captions (the paper's 25% single sentences)

def caption(scene: Scene) -> str:
    """ "a red circle on the left, a green square at the top and a blue triangle at the bottom right"."""
    parts = [s.phrase() for s in scene.shapes]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _refer(scene: Scene, s: Shape) -> str | None:
    """The shortest unique description of ``s`` ("the circle", "the red circle"), or None."""
    if len(scene.of_class(s.shape)) == 1:
        return f"the {s.shape}"
    if sum(o.shape == s.shape and o.color == s.color for o in scene.shapes) == 1:
        return f"the {s.color} {s.shape}"
    return None


def questions_for_scene(scene: Scene) -> list[tuple[str, str, str]]:
    """Every (question_type, question, answer) the scene supports; answers are single exact words or
    place names (numbers as words "zero".."four", yes/no as "yes"/"no")."""
    qa = [("caption", CAPTION_REQUEST, caption(scene))]
    for s in scene.shapes:
        if len(scene.of_class(s.shape)) == 1:
            qa.append(("color", f"What color is the {s.shape}?", s.color))
        if sum(o.color == s.color for o in scene.shapes) == 1:
            qa.append(("shape", f"What shape is the {s.color} object?", s.shape))
    qa.append(("count", "How many shapes are there?", NUMBER_WORDS[len(scene.shapes)]))
    qa += [
        ("count", f"How many {PLURALS[c]} are there?", NUMBER_WORDS[len(scene.of_class(c))]) for c in SHAPES
    ]
    for k in dict.fromkeys(s.color for s in scene.shapes):
        n = sum(s.color == k for s in scene.shapes)
        qa.append(("count", f"How many {k} shapes are there?", NUMBER_WORDS[n]))
    refs = [(s, r) for s in scene.shapes if (r := _refer(scene, s)) is not None]
    qa += [("position", f"Where is {r}?", s.place) for s, r in refs]
    for (a, ra), (b, rb) in itertools.permutations(refs, 2):
        rels = relative_position(a.box, b.box)
        for yes, no in (("left of", "right of"), ("above", "below")):
            if yes in rels or no in rels:  # ask only when the axis is unambiguous
                qa.append(("position", f"Is {ra} {yes} {rb}?", "yes" if yes in rels else "no"))
    return qa


def _weighted_choice(rng: np.random.Generator, options: list[str], weights: Mapping[str, float]) -> str:
    p = np.array([float(weights.get(o, 0.0)) for o in options])
    if p.sum() <= 0:  # none of the weighted options is possible here: fall back to uniform
        return options[rng.integers(len(options))]
    return options[rng.choice(len(options), p=p / p.sum())]


def check_weights(weights: Mapping[str, float] | None, allowed: tuple[str, ...], name: str) -> None:
    """One-line refusal of unknown keys or negative weights in a mix given by the user."""
    for key, value in (weights or {}).items():
        if key not in allowed or float(value) < 0:
            raise ValueError(f"{name}: {key!r}={value!r} is not allowed; keys are {allowed}, weights >= 0")


def understanding_sample(
    scene: Scene,
    rng: np.random.Generator,
    type_weights: Mapping[str, float] | None = None,
    turns: int = 1,
    image_after_question: float = 0.0,
) -> dict[str, Any]:
    """A LLaVA-style conversation of ``turns`` different questions about one image (fewer when the
    scene supports fewer). Each turn draws a question type among those still open (uniform, or by
    ``type_weights``), then a question of that type uniformly. ``question_type`` is the first turn's.

    The image marker opens the first turn (``"<image>\\n<question>"``), or, with probability
    ``image_after_question``, closes it (``"<question>\\n<image>"``), as LLaVA's data does both. Why it
    matters: under causal attention an image placed first cannot see the question, so "What color is the
    circle?" needs a question-dependent lookup at the answer; placed after, every image token can check
    itself against the question. A probability strictly between 0 and 1 draws one number from ``rng``
    after the questions, so the other settings keep the streams they always had.

    Several turns per image are several answers' worth of supervision for one image's tokens, the
    costly part of an understanding sample (64 of ~80 tokens in the tiny preset)."""
    if turns < 1:
        raise ValueError(f"turns={turns} must be >= 1")
    if not 0.0 <= image_after_question <= 1.0:
        raise ValueError(f"image_after_question={image_after_question} must be a probability in [0, 1]")
    open_qa = questions_for_scene(scene)
    conversations: list[dict[str, str]] = []
    asked_types: list[str] = []
    while open_qa and len(asked_types) < turns:
        types = [t for t in QUESTION_TYPES if any(q[0] == t for q in open_qa)]
        if type_weights is None:
            qtype = types[rng.integers(len(types))]
        else:
            qtype = _weighted_choice(rng, types, type_weights)
        pool = [q for q in open_qa if q[0] == qtype]
        picked = pool[rng.integers(len(pool))]
        open_qa.remove(picked)
        _, question, answer = picked
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        asked_types.append(qtype)
    first = conversations[0]
    if image_after_question in (0.0, 1.0):
        image_last = image_after_question == 1.0
    else:
        image_last = bool(rng.random() < image_after_question)
    first["value"] = first["value"] + "\n<image>" if image_last else "<image>\n" + first["value"]
    return {"conversations": conversations, "question_type": asked_types[0]}


def generation_prompt(scene: Scene, rng: np.random.Generator) -> tuple[str, dict[str, Any] | None]:
    """(prompt, spec): a GenEval-phrased prompt naming the whole scene, or (CAPTION_FRACTION of the time,
    or when no spec fits) the scene's caption with spec None."""
    specs = specs_for_scene(scene)
    if rng.random() < CAPTION_FRACTION or not specs:
        return caption(scene), None
    spec = specs[rng.integers(len(specs))]
    return spec["prompt"], spec


GENERATION_KINDS = ("caption", *GENEVAL_TASKS)


def generation_sample(
    rng: np.random.Generator, task_weights: Mapping[str, float] | None = None
) -> tuple[Scene, str, dict[str, Any] | None]:
    """(scene, prompt, spec): by default CAPTION_FRACTION free captions of random scenes and the rest
    balanced over the six tasks; ``task_weights`` over GENERATION_KINDS reweights them. Then a spec of
    the task uniformly and a scene drawn for that spec."""
    if task_weights is None:
        task = "caption" if rng.random() < CAPTION_FRACTION else GENEVAL_TASKS[rng.integers(len(GENEVAL_TASKS))]
    else:
        task = _weighted_choice(rng, list(GENERATION_KINDS), task_weights)
    if task == "caption":
        scene = sample_scene(rng)
        return scene, caption(scene), None
    pool = _all_specs(task)
    spec = copy.deepcopy(pool[rng.integers(len(pool))])
    return scene_for_spec(spec, rng), spec["prompt"], spec


_SHAPE_FACTS = {
    "circle": ("a circle is round.", "a circle has no corners.", "a circle has one curved side."),
    "square": ("a square has four corners.", "a square has four equal sides.", "a square is not round."),
    "triangle": ("a triangle has three corners.", "a triangle has three sides.", "a triangle points up."),
}
_PLURAL_FACTS = {"circle": "are round", "square": "have four corners", "triangle": "have three corners"}
_OPPOSITES = (("left", "right"), ("top", "bottom"), ("above", "below"), ("yes", "no"))


def _noun(shape: str, n: int) -> str:
    return shape if n == 1 else PLURALS[shape]


def _text_sentence(rng: np.random.Generator) -> str:
    kind = int(rng.integers(6))
    shape, color = SHAPES[rng.integers(len(SHAPES))], COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
    if kind == 0:
        facts = _SHAPE_FACTS[shape]
        return facts[rng.integers(len(facts))]
    if kind == 1:
        return [
            f"{color} {PLURALS[shape]} {_PLURAL_FACTS[shape]}.",
            f"a {color} {shape} is {color}.",
            f"{color} is a color and a {shape} is a shape.",
        ][rng.integers(3)]
    if kind == 2:
        n = int(rng.integers(1, MAX_SHAPES))
        m = int(rng.integers(1, MAX_SHAPES - n + 1))
        other = [s for s in SHAPES if s != shape][rng.integers(len(SHAPES) - 1)]
        w = NUMBER_WORDS
        return f"{w[n]} {_noun(shape, n)} and {w[m]} {_noun(other, m)} make {w[n + m]} shapes."
    if kind == 3:
        k = int(rng.integers(MAX_SHAPES))
        return [
            f"after {NUMBER_WORDS[k]} comes {NUMBER_WORDS[k + 1]}.",
            f"{NUMBER_WORDS[k + 1]} is more than {NUMBER_WORDS[k]}.",
        ][rng.integers(2)]
    if kind == 4:
        a, b = _OPPOSITES[rng.integers(len(_OPPOSITES))][:: 1 if rng.random() < 0.5 else -1]
        return f"{a} is the opposite of {b}."
    return f"there is a picture with {caption(sample_scene(rng))}."


def text_sample(rng: np.random.Generator) -> str:
    """A short text-only document: 2 to 4 sentences about the world."""
    return " ".join(_text_sentence(rng) for _ in range(int(rng.integers(2, 5))))


_FUNCTION_WORDS = (
    "a", "and", "are", "at", "after", "color", "comes", "corners", "curved", "equal", "has", "have", "in",
    "is", "make", "many", "more", "no", "not", "object", "of", "on", "opposite", "photo", "picture", "points",
    "round", "shape", "shapes", "side", "sides", "than", "the", "there", "up", "with", "yes",
    "Generate", "How", "Is", "What", "Where", "caption", "this",
)  # fmt: skip


def all_words() -> list[str]:
    """Every word any world text uses (case as written; punctuation and digits excluded), sorted."""
    words = set(_FUNCTION_WORDS) | set(SHAPES) | set(PLURALS.values()) | set(COLOR_NAMES) | set(NUMBER_WORDS)
    words |= {w for p in (*PLACES, *RELATIONS) for w in p.split()}
    return sorted(words)
