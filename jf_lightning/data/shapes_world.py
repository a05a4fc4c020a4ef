"""The synthetic "shapes world": the embedded default dataset (pure Python, numpy and PIL).

Scenes hold 1 to 4 flat shapes (circle, square, upward triangle) in 6 palette colours on a white
background. Shapes never touch (at least one white pixel between them from 32 px up) and stay inside the
image, so a colour-segmentation + connected-components detector recovers every object exactly; pixels are
drawn without anti-aliasing, so every pixel is white or a palette colour.

From a scene and a ``numpy.random.Generator`` (everything is deterministic given the generator) the
world writes the three data kinds: understanding conversations (a caption request or a question with a
short exact answer), generation prompts (GenEval-phrased, or a free caption) and text-only sentences.
GenEval-style prompt specs use GenEval's metadata format with a shape name as ``class``;
:func:`scene_for_spec` draws a scene that satisfies a spec, so every prompt has a ground-truth image.

Coordinates are fractions of the image side, origin at the top left, y pointing down.
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from jf_lightning.metrics.geneval import relative_position  # GenEval's own rule decides the world's relations

SHAPES = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (240, 200, 0),
    "purple": (140, 50, 190),
    "black": (20, 20, 20),
}
COLOR_NAMES = tuple(COLORS)
BACKGROUND = (255, 255, 255)
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
MAX_SHAPES = 4
# Side of a shape's box by how many shapes share the image: a lone shape is drawn large, so that its
# class is plain at 32 px (to the generator learning it and to the detector scoring it); four still fit.
# Probe (generation only, 1,200 steps): shapes of 0.18-0.30 in every scene gave GenEval colors 0.27-0.29,
# these sizes 0.33-0.44, on 48 prompts.
SIZE_RANGES = {1: (0.30, 0.50), 2: (0.26, 0.42), 3: (0.22, 0.36), 4: (0.20, 0.32)}
# Boxes are kept GAP apart: 0.06 * 32 px > 1.9 px leaves at least one white pixel between shapes after
# rounding box edges to pixels, so shapes are separate connected components (8-connectivity) from 32 px up.
GAP = 0.06
BORDER = 0.02  # a shape's box stays this far from the image edge (detector boxes are never clipped)

GENEVAL_TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
POSITION_MARGIN = 0.1  # GenEval's POSITION_THRESHOLD
SPEC_POSITION_MARGIN = 0.2  # scenes drawn for position specs clear GenEval's rule with room to spare
CAPTION_REQUEST = "Generate the caption of this picture."
QUESTION_TYPES = ("caption", "color", "count", "shape", "position")
PLACES = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
CAPTION_FRACTION = 0.25  # generation prompts that are free captions (the paper's 25% single sentences)


@dataclass(frozen=True)
class Shape:
    shape: str
    color: str
    center: tuple[float, float]
    """(cx, cy) in [0, 1] image coordinates."""
    size: float
    """Side of the shape's square bounding box, as a fraction of the image side."""

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in [0, 1] image coordinates."""
        (cx, cy), h = self.center, self.size / 2
        return (cx - h, cy - h, cx + h, cy + h)

    @property
    def place(self) -> str:
        """Named place of the centre in a 3x3 grid: "top left", "top", ..., "center", ..."bottom right"."""
        cx, cy = self.center
        col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
        row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
        return f"{row} {col}".strip() or "center"

    def phrase(self) -> str:
        """ "a red circle on the left", "a blue square at the top right", "a black triangle in the center"."""
        place = self.place
        prep = "in" if place == "center" else "on" if place in ("left", "right") else "at"
        return f"a {self.color} {self.shape} {prep} the {place}"


@dataclass
class Scene:
    shapes: list[Shape] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"shapes": [asdict(s) for s in self.shapes]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scene:
        return cls([Shape(s["shape"], s["color"], tuple(s["center"]), s["size"]) for s in d["shapes"]])

    def of_class(self, shape: str) -> list[Shape]:
        return [s for s in self.shapes if s.shape == shape]


# ---------------------------------------------------------------------------------------------- sampling
def _apart(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """Boxes (cx, cy, size) at least GAP apart along some axis (then the shapes cannot touch)."""
    half = (a[2] + b[2]) / 2
    return abs(a[0] - b[0]) - half >= GAP or abs(a[1] - b[1]) - half >= GAP


def _sample_layout(rng: np.random.Generator, n: int, tries: int = 100) -> list[tuple[float, float, float]]:
    """n non-touching boxes (cx, cy, size) inside the image, by rejection sampling; sizes drawn from
    ``SIZE_RANGES[n]``."""
    low, high = SIZE_RANGES[n]
    for _ in range(tries):
        boxes: list[tuple[float, float, float]] = []
        for size in np.round(rng.uniform(low, high, n), 4):
            lo, hi = BORDER + size / 2, 1 - BORDER - size / 2
            for _ in range(50):
                cx, cy = np.round(rng.uniform(lo, hi, 2), 4)
                box = (float(cx), float(cy), float(size))
                if lo <= cx <= hi and lo <= cy <= hi and all(_apart(box, b) for b in boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) == n:
            return boxes
    raise RuntimeError(f"could not place {n} shapes without overlap")


def sample_scene(
    rng: np.random.Generator,
    n_shapes: int | None = None,
    constraints: Sequence[Mapping[str, str]] = (),
    accept: Callable[[Scene], bool] | None = None,
    max_tries: int = 1000,
) -> Scene:
    """A random scene of ``n_shapes`` shapes (default: uniform 1..4, at least ``len(constraints)``).

    ``constraints``: one dict per required object, with optional keys ``shape`` and ``color``; the
    remaining objects are free. ``accept``: a predicate the scene must satisfy (rejection sampling).
    The objects' order in the scene is shuffled.
    """
    constraints = list(constraints)
    if n_shapes is None:
        n_shapes = int(rng.integers(max(1, len(constraints)), MAX_SHAPES + 1))
    if not max(1, len(constraints)) <= n_shapes <= MAX_SHAPES:
        raise ValueError(
            f"n_shapes={n_shapes} must be in [max(1, {len(constraints)} constraints), {MAX_SHAPES}]"
        )
    for _ in range(max_tries):
        kinds = [
            (
                c.get("shape") or SHAPES[rng.integers(len(SHAPES))],
                c.get("color") or COLOR_NAMES[rng.integers(len(COLOR_NAMES))],
            )
            for c in constraints + [{}] * (n_shapes - len(constraints))
        ]
        boxes = _sample_layout(rng, n_shapes)
        shapes = [Shape(k[0], k[1], (b[0], b[1]), b[2]) for k, b in zip(kinds, boxes)]
        scene = Scene([shapes[i] for i in rng.permutation(n_shapes)])
        if accept is None or accept(scene):
            return scene
    raise RuntimeError("no scene satisfying the constraints was found")


# --------------------------------------------------------------------------------------------- rendering
def pixel_box(shape: Shape, size: int) -> tuple[int, int, int, int]:
    """Inclusive pixel box (x0, y0, x1, y1) the shape is drawn in at ``size`` x ``size`` pixels."""
    x0, y0, x1, y1 = (round(v * size) for v in shape.box)
    return (x0, y0, x1 - 1, y1 - 1)


def _draw_shape(draw: ImageDraw.ImageDraw, s: Shape, size: int, fill: Any) -> None:
    x0, y0, x1, y1 = pixel_box(s, size)
    if s.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif s.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif s.shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    else:
        raise ValueError(f"unknown shape {s.shape!r}; expected one of {SHAPES}")


def render_scene(scene: Scene, size: int) -> Image.Image:
    """RGB image, white background, shapes in exact palette colours (no anti-aliasing)."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for s in scene.shapes:
        _draw_shape(draw, s, size, COLORS[s.color])
    return image


PATCH_LABELS = 1 + len(SHAPES) * len(COLOR_NAMES)
"""Classes of :func:`patch_labels`: background, then every (shape, colour) pair."""


def patch_labels(scene: Scene, size: int, grid: int) -> np.ndarray:
    """(grid * grid,) int64 class of each patch of the scene drawn at ``size`` px, row-major: 0 for
    background, else ``1 + shape index * len(COLORS) + colour index`` of the shape covering most of the
    patch (at least a quarter of it). The dense target that teaches an encoder's patches which object
    they belong to (models/siglip_pretraining.py)."""
    if size % grid:
        raise ValueError(f"a {size} px image does not split into {grid} x {grid} patches")
    cell = size // grid
    # Shapes never overlap, so one drawing of shape numbers 1..n tells every pixel's shape.
    index = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(index)
    for number, s in enumerate(scene.shapes, start=1):
        _draw_shape(draw, s, size, number)
    pixels = np.asarray(index).reshape(grid, cell, grid, cell).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    cover = np.stack([(pixels == n).sum(axis=1) for n in range(len(scene.shapes) + 1)], axis=1)  # (P, 1 + n)
    cover[:, 0] = 0  # background never wins a patch a shape covers enough
    winner = cover.argmax(axis=1)  # (P,) shape number
    classes = np.array(
        [0] + [1 + SHAPES.index(s.shape) * len(COLOR_NAMES) + COLOR_NAMES.index(s.color) for s in scene.shapes]
    )
    return np.where(cover.max(axis=1) * 4 >= cell * cell, classes[winner], 0).astype(np.int64)


# ------------------------------------------------------------------------------------------ GenEval specs
def _spec(tag: str, include: list[dict], prompt: str, exclude: list[dict] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"tag": tag, "include": include}
    if exclude:
        spec["exclude"] = exclude
    spec["prompt"] = prompt
    return spec


@functools.cache
def _all_specs(task: str) -> tuple[dict[str, Any], ...]:
    pairs = list(itertools.permutations(SHAPES, 2))
    if task == "single_object":
        out = [_spec(task, [{"class": c, "count": 1}], f"a photo of a {c}") for c in SHAPES]
    elif task == "two_object":
        out = [
            _spec(task, [{"class": a, "count": 1}, {"class": b, "count": 1}], f"a photo of a {a} and a {b}")
            for a, b in pairs
        ]
    elif task == "counting":
        out = [
            _spec(
                task,
                [{"class": c, "count": n}],
                f"a photo of {NUMBER_WORDS[n]} {PLURALS[c]}",
                exclude=[{"class": c, "count": n + 1}],
            )
            for c in SHAPES
            for n in range(2, MAX_SHAPES + 1)
        ]
    elif task == "colors":
        out = [
            _spec(task, [{"class": c, "count": 1, "color": k}], f"a photo of a {k} {c}")
            for c in SHAPES
            for k in COLOR_NAMES
        ]
    elif task == "position":  # "a photo of a A <relation> a B": include [B, A relative to include 0]
        out = [
            _spec(
                task,
                [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
                f"a photo of a {a} {rel} a {b}",
            )
            for a, b in pairs
            for rel in RELATIONS
        ]
    elif task == "color_attr":
        out = [
            _spec(
                task,
                [{"class": a, "count": 1, "color": ka}, {"class": b, "count": 1, "color": kb}],
                f"a photo of a {ka} {a} and a {kb} {b}",
            )
            for a, b in pairs
            for ka, kb in itertools.permutations(COLOR_NAMES, 2)
        ]
    else:
        raise ValueError(f"unknown GenEval task {task!r}; expected one of {GENEVAL_TASKS}")
    return tuple(out)


def all_geneval_specs(task: str) -> list[dict[str, Any]]:
    """Every distinct spec of one task (3, 6, 9, 18, 24 and 180 for the six tasks)."""
    return copy.deepcopy(list(_all_specs(task)))


def geneval_specs(rng: np.random.Generator, n_per_task: int) -> list[dict[str, Any]]:
    """``n_per_task`` specs per task, grouped by task in GENEVAL_TASKS order; distinct while a task has
    enough, then cycling through a fresh permutation."""
    out = []
    for task in GENEVAL_TASKS:
        pool = _all_specs(task)
        order = np.concatenate(
            [rng.permutation(len(pool)) for _ in range(-(-n_per_task // len(pool)))] or [[]]
        )
        out += [copy.deepcopy(pool[int(i)]) for i in order[:n_per_task]]
    return out


def geneval_eval_specs(seed: int = 0, n_per_task: int = 16) -> list[dict[str, Any]]:
    """The fixed validation prompt set (its own random stream, independent of the training shards)."""
    return geneval_specs(np.random.default_rng([seed, 0x6E7A1]), n_per_task)


def scene_satisfies_spec(scene: Scene, spec: Mapping[str, Any], margin: float = POSITION_MARGIN) -> bool:
    """GenEval's rule on the scene's true objects, for any detector confidence order: a colour clause
    needs every object of its class in that colour, a position clause every object of its class in the
    relation to every object of the target clause."""
    groups: list[list[Shape] | None] = []
    for req in spec.get("include", []):
        objs = scene.of_class(req["class"])
        ok = len(objs) >= int(req["count"])
        if ok and "color" in req:
            ok = all(o.color == req["color"] for o in objs)
        if ok and "position" in req:
            rel, target = req["position"]
            tgt = groups[int(target)] if 0 <= int(target) < len(groups) else None
            ok = tgt is not None and all(
                rel in relative_position(o.box, t.box, margin) for o in objs for t in tgt
            )
        if not ok:
            return False
        groups.append(objs)
    return all(len(scene.of_class(req["class"])) < int(req["count"]) for req in spec.get("exclude", []))


def scene_for_spec(spec: Mapping[str, Any], rng: np.random.Generator) -> Scene:
    """A scene holding exactly the spec's included objects and satisfying it (a ground-truth image)."""
    constraints = [
        {"shape": req["class"], **({"color": req["color"]} if "color" in req else {})}
        for req in spec["include"]
        for _ in range(int(req["count"]))
    ]
    margin = SPEC_POSITION_MARGIN if spec.get("tag") == "position" else POSITION_MARGIN
    return sample_scene(
        rng, len(constraints), constraints, accept=lambda s: scene_satisfies_spec(s, spec, margin)
    )


def specs_for_scene(scene: Scene) -> list[dict[str, Any]]:
    """Every GenEval spec that the scene satisfies and that names all of its objects."""
    n = len(scene.shapes)
    return [
        copy.deepcopy(spec)
        for task in GENEVAL_TASKS
        for spec in _all_specs(task)
        if sum(int(r["count"]) for r in spec["include"]) == n and scene_satisfies_spec(scene, spec)
    ]


# ------------------------------------------------------------------------------------------------- text
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
