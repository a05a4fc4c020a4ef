"""GenEval-format prompt specs of the shapes world: every spec of each of GenEval's six tasks, with a
shape name as ``class``; the check that a scene satisfies one under GenEval's rules; and a ground-truth
scene drawn for any spec."""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np

from jf_lightning.metrics.geneval import GENEVAL_TASKS, RELATIONS, relative_position
from jf_lightning.shapes.world import (
    COLOR_NAMES,
    MAX_SHAPES,
    NUMBER_WORDS,
    PLURALS,
    SHAPES,
    Scene,
    Shape,
    sample_scene,
)

POSITION_MARGIN = 0.1  # GenEval's POSITION_THRESHOLD
SPEC_POSITION_MARGIN = 0.2  # scenes drawn for position specs clear GenEval's rule with room to spare

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
